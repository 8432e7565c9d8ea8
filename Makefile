# The two commands a newcomer needs are `make dev` and `make test`; the rest are conveniences.
.DEFAULT_GOAL := help
SHELL := /bin/bash
DEV_DB_PORT ?= 54329
MAILDEV_SMTP_PORT ?= 1025
MAILDEV_WEB_PORT ?= 1080
# The Lambda functions: the functions/* workspace members, read by scripts/env.sh (one list).
FUNCTIONS = $(shell source scripts/env.sh && echo "$${FUNCTIONS[@]}")

.PHONY: help dev test check build lambda-build bench fuzz deny contract deploy venv migrate verify status events prune db-start db-stop db-url db-psql db-destroy maildev maildev-stop clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

dev: ## Serve the API on http://localhost:9000 over a local Postgres, mail to MailDev (http://127.0.0.1:1080), hot reload
	@scripts/dev.sh

test: ## Format, lint, unit/database/handler tests, end-to-end over HTTP, template lint
	@scripts/test.sh

check: ## Quick checks without a database: fmt, clippy, unit tests
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace --lib

build: ## Build the release binaries for this machine
	cargo build --release $(addprefix -p ,$(FUNCTIONS)) -p cli

lambda-build: venv ## Build the arm64 Lambda zips into target/lambda/ (cargo-lambda brings zig)
	PATH="$(CURDIR)/.venv/bin:$$PATH" cargo-lambda lambda build --release --arm64 --output-format zip $(addprefix -p ,$(FUNCTIONS))

bench: ## Run the benchmarks (see BENCHMARKS.md)
	@scripts/bench.sh

fuzz: ## Coverage-guided fuzzing of the parsers, FUZZ_SECONDS (60) per target (docs/fuzzing.md)
	@scripts/fuzz.sh

deny: ## Supply chain: licenses, bans, sources, RustSec advisories offline (docs/supply-chain.md)
	@scripts/deny.sh

contract: ## Schemathesis against a running API: make contract URL=http://localhost:9000
	@scripts/contract/run.sh "$(or $(URL),http://localhost:9000)" stranger

deploy: venv ## Build and deploy with SAM (needs AWS credentials and the sam CLI)
	PATH="$(CURDIR)/.venv/bin:$$PATH" sam build --beta-features && sam deploy --guided

venv: ## Install cargo-lambda, cfn-lint, pytest and schemathesis into .venv
	@source scripts/env.sh && ensure_venv

migrate: ## Apply migrations to DATABASE_URL (environment, .env, else the local dev database)
	@scripts/authctl.sh migrate

verify: ## Check the schema of DATABASE_URL against what the code expects
	@scripts/authctl.sh verify

status: ## List migrations and whether each is applied
	@scripts/authctl.sh status

events: ## Recent audit events of an account: make events EMAIL=ann@example.com
	@scripts/authctl.sh events --user "$(EMAIL)"

prune: ## Delete audit events and finished sessions older than AUDIT_RETENTION_DAYS
	@scripts/authctl.sh prune

db-start: ## Start the local dev Postgres (created on first use)
	@scripts/pg.sh start dev $(DEV_DB_PORT)

db-stop: ## Stop the local dev Postgres
	@scripts/pg.sh stop dev $(DEV_DB_PORT)

db-url: ## Print the local dev DATABASE_URL
	@scripts/pg.sh url dev $(DEV_DB_PORT)

db-psql: ## Open psql on the local dev database
	@scripts/pg.sh psql dev $(DEV_DB_PORT)

db-destroy: ## Stop and delete the local dev Postgres and its data
	@scripts/pg.sh destroy dev $(DEV_DB_PORT)

maildev: ## Start the local mail server alone (SMTP 127.0.0.1:1025, inbox http://127.0.0.1:1080)
	@scripts/maildev.sh start dev $(MAILDEV_SMTP_PORT) $(MAILDEV_WEB_PORT)

maildev-stop: ## Stop the local mail server
	@scripts/maildev.sh stop dev $(MAILDEV_SMTP_PORT) $(MAILDEV_WEB_PORT)

clean: ## Remove build output
	cargo clean
