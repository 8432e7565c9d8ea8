//! MailDev's REST API, for the link tokens the functions mail (`…#token=…`), as
//! scripts/e2e/mail.py reads them: MailDev 3.x serves `/api/email`, 2.x `/email`.

use crate::{Result, http::HttpClient};
use serde_json::Value;
use std::collections::HashMap;

/// A MailDev web server.
pub struct MailDev {
    client: HttpClient,
    path: Option<&'static str>,
}

impl MailDev {
    /// The MailDev at `url` (`http://127.0.0.1:1080`).
    pub fn new(url: &str) -> Self {
        Self {
            client: HttpClient::new(url, true),
            path: None,
        }
    }

    /// Every message in the inbox.
    fn messages(&mut self) -> Result<Vec<Value>> {
        let paths: &[&'static str] = match self.path {
            Some(path) => &[path][..],
            None => &["/api/email", "/email"],
        };
        for path in paths {
            let (status, body, _) = self.client.request("GET", path, None, None)?;
            if status == 200
                && let Value::Array(messages) = body
            {
                self.path = Some(path);
                return Ok(messages);
            }
        }
        Err("MailDev answers neither /api/email nor /email".into())
    }

    /// The link token of the newest message to each address in `to` whose link goes to `page`
    /// (`verify-email`, `reset-password`), in `to`'s order; `None` while one is missing.
    pub fn tokens(&mut self, to: &[String], page: &str) -> Result<Option<Vec<String>>> {
        let marker = format!("/{page}#token=");
        let mut found: HashMap<String, String> = HashMap::new();
        for message in self.messages()? {
            let text = message["text"].as_str().unwrap_or_default();
            let Some(at) = text.find(&marker) else {
                continue;
            };
            let token: String = text[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            for recipient in message["to"].as_array().into_iter().flatten() {
                if let Some(address) = recipient["address"].as_str() {
                    // The inbox lists oldest first: a later message wins.
                    found.insert(address.to_lowercase(), token.clone());
                }
            }
        }
        Ok(to
            .iter()
            .map(|a| found.get(&a.to_lowercase()).cloned())
            .collect())
    }
}
