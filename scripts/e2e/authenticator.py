"""The user's side of two-step login, for test_mfa.py: an authenticator app (pyotp, an RFC 6238
implementation independent of the server's) and a phone camera (the enrolment's SVG QR code
drawn with Pillow and read back with zxing-cpp).

Time steps. The server accepts the code of its current 30 s step and of one step either side,
each step once per user: a code is refused unless its step is later than the last one accepted
(confirm, login's second step and turning TOTP off share that record). The tests never sleep
for a new step. `Authenticator.next_code()` picks, from the steps the server accepts now, the
earliest one later than the last step it handed out that stays acceptable for at least
`MARGIN` more seconds, so a request on a busy machine is still inside the window when it
arrives. Of the steps now-1, now and now+1, "now" stays acceptable for at least 30 s and
"now+1" for at least 60 s, so any user can always be handed two fresh codes in a row (a third
only when "now-1" had MARGIN left); every test is written to need at most two per enrolment.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
import xml.etree.ElementTree as ET

import pyotp
import pytest
import zxingcpp
from PIL import Image, ImageDraw

STEP = 30          # seconds per step (RFC 6238's default, API.md)
SKEW = 1           # steps accepted on either side of the current one
DIGITS = 6
# A code is handed out only while it stays acceptable this much longer: the requests that
# carry it (an argon2 login first, at times) finish well within it even on a busy machine.
MARGIN = 15.0

BASE32_SECRET = re.compile(r"[A-Z2-7]{32}")     # 160 bits, no padding
RECOVERY_CODE = re.compile(r"[A-Z2-7]{4}(?:-[A-Z2-7]{4}){3}")


def current_step(at: float | None = None) -> int:
    return int(time.time() if at is None else at) // STEP


class Authenticator:
    """An authenticator app holding one secret; remembers the last step it handed out (which
    the tests then have the server accept), so it never offers a used step again."""

    def __init__(self, secret: str):
        assert BASE32_SECRET.fullmatch(secret), f"secret is not 160 bits of base32: {secret!r}"
        self.secret = secret
        self.totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)  # SHA-1 by default
        self.last_step: int | None = None

    def at_step(self, step: int) -> str:
        return self.totp.at(step * STEP)

    def acceptable_steps(self, margin: float = MARGIN) -> list[int]:
        """The steps whose codes the server accepts now and still will `margin` seconds from
        now, later than the last step handed out; earliest first."""
        now = time.time()
        steps = []
        for step in range(current_step(now) - SKEW, current_step(now) + SKEW + 1):
            # step s is accepted while the server's step is within s-1 .. s+1, that is from
            # (s-1)*STEP until (s+2)*STEP
            if (step - SKEW) * STEP <= now and (step + SKEW + 1) * STEP - now >= margin:
                if self.last_step is None or step > self.last_step:
                    steps.append(step)
        return steps

    def next_step(self) -> int:
        steps = self.acceptable_steps()
        if not steps:
            pytest.fail(f"no fresh TOTP step left (last handed out: {self.last_step}, now "
                        f"{current_step()}): the test asks for more codes than one window holds",
                        pytrace=False)
        self.last_step = steps[0]
        return steps[0]

    def peek_code(self) -> str:
        """The code next_code() would give now, without spending its step (for a request the
        server is to refuse before it looks at the code)."""
        steps = self.acceptable_steps()
        assert steps, f"no fresh TOTP step left (last handed out: {self.last_step})"
        return self.at_step(steps[0])

    def next_code(self) -> str:
        """A code the server accepts now (and for MARGIN seconds more) for a step it has not
        accepted yet; from here on that step counts as used."""
        return self.at_step(self.next_step())

    def latest_code(self) -> str:
        """The code of the latest step the server accepts now (current + 1, acceptable for at
        least 60 s); from here on every step up to it counts as used."""
        step = current_step() + SKEW
        assert self.last_step is None or step > self.last_step, (step, self.last_step)
        self.last_step = step
        return self.at_step(step)

    def wrong_code(self) -> str:
        """Six digits that are the code of no step near now (so no window, however the clock
        moves during the test, accepts them)."""
        now = current_step()
        near = {self.at_step(s) for s in range(now - 4, now + 5)}
        while True:
            code = f"{secrets.randbelow(10 ** DIGITS):0{DIGITS}d}"
            if code not in near:
                return code


# --- the QR code --------------------------------------------------------------------------------

SVG_NS = "{http://www.w3.org/2000/svg}"
_PATH_TOKEN = re.compile(r"\s*(?:([MmHhVvLlZz])|(-?\d+(?:\.\d+)?))\s*,?")
_GRAY = {"#fff": 255, "#ffffff": 255, "white": 255, "#000": 0, "#000000": 0, "black": 0}


def svg_of_data_uri(uri: str) -> str:
    """The SVG text of a `data:image/svg+xml;base64,…` URI (strict base64)."""
    prefix = "data:image/svg+xml;base64,"
    assert isinstance(uri, str) and uri.startswith(prefix), f"qr_code is not an SVG data URI: {uri[:80]!r}"
    raw = base64.b64decode(uri[len(prefix):], validate=True)
    return raw.decode("utf-8")


def _subpaths(d: str) -> list[list[tuple[float, float]]]:
    """The points of each subpath of an SVG path made of straight lines (M, L, H, V, Z, and
    their relative forms: all the qrcode crate's SVG renderer writes)."""
    tokens: list[tuple[str | None, str | None]] = []
    pos = 0
    while pos < len(d):
        match = _PATH_TOKEN.match(d, pos)
        assert match and match.end() > pos, f"path data this reader does not know: {d[pos:pos + 40]!r}"
        tokens.append((match.group(1), match.group(2)))
        pos = match.end()
    out: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    x = y = 0.0
    start = (0.0, 0.0)
    i = 0

    def number() -> float:
        nonlocal i
        assert i < len(tokens) and tokens[i][1] is not None, f"path: number expected at {i}"
        i += 1
        return float(tokens[i - 1][1])

    while i < len(tokens):
        command = tokens[i][0]
        assert command, f"path: command expected at {i}, got {tokens[i]!r}"
        i += 1
        if command in "Mm":
            if len(current) > 1:
                out.append(current)
            a, b = number(), number()
            x, y = (x + a, y + b) if command == "m" else (a, b)
            start = (x, y)
            current = [(x, y)]
        elif command in "Ll":
            a, b = number(), number()
            x, y = (x + a, y + b) if command == "l" else (a, b)
            current.append((x, y))
        elif command == "H":
            x = number()
            current.append((x, y))
        elif command == "h":
            x += number()
            current.append((x, y))
        elif command == "V":
            y = number()
            current.append((x, y))
        elif command == "v":
            y += number()
            current.append((x, y))
        else:  # Z z
            x, y = start
            current.append((x, y))
    if len(current) > 1:
        out.append(current)
    return out


def rasterize(svg_text: str, scale: int = 2, border: int = 32) -> Image.Image:
    """The SVG drawn in gray levels: its <rect> elements and the axis-aligned rectangles of its
    <path> elements, in document order, `scale` pixels per SVG unit, on a white margin."""
    root = ET.fromstring(svg_text)
    assert root.tag == SVG_NS + "svg", f"not an SVG document: {root.tag!r}"
    view_box = root.get("viewBox")
    if view_box:
        left, top, width, height = (float(v) for v in view_box.replace(",", " ").split())
    else:
        left = top = 0.0
        width, height = float(root.get("width")), float(root.get("height"))
    assert 0 < width <= 5000 and 0 < height <= 5000, (width, height)
    image = Image.new("L", (round(width * scale) + 2 * border, round(height * scale) + 2 * border), 255)
    draw = ImageDraw.Draw(image)

    def fill_box(x0: float, y0: float, x1: float, y1: float, fill: int) -> None:
        px = [border + round((x0 - left) * scale), border + round((y0 - top) * scale),
              border + round((x1 - left) * scale) - 1, border + round((y1 - top) * scale) - 1]
        if px[2] >= px[0] and px[3] >= px[1]:
            draw.rectangle(px, fill=fill)

    def gray(element) -> int:
        fill = (element.get("fill") or "#000").strip().lower()
        assert fill in _GRAY, f"unexpected fill {fill!r}"
        return _GRAY[fill]

    for element in root.iter():
        tag = element.tag.removeprefix(SVG_NS)
        if tag == "svg":
            continue
        if tag == "rect":
            x, y = float(element.get("x", 0)), float(element.get("y", 0))
            fill_box(x, y, x + float(element.get("width")), y + float(element.get("height")),
                     gray(element))
        elif tag == "path":
            for points in _subpaths(element.get("d", "")):
                xs, ys = {p[0] for p in points}, {p[1] for p in points}
                assert len(xs) == 2 and len(ys) == 2 and len(points) >= 4, (
                    f"path holds a shape that is no axis-aligned rectangle: {points!r}")
                fill_box(min(xs), min(ys), max(xs), max(ys), gray(element))
        else:
            raise AssertionError(f"SVG element this reader does not draw: {tag!r}")
    return image


def read_qr_code(data_uri: str) -> str:
    """What a phone's camera reads from the QR code of `data_uri`: its one QR code's text."""
    image = rasterize(svg_of_data_uri(data_uri))
    found = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(found) == 1, f"expected one QR code in the image, found {len(found)}"
    assert found[0].valid, found[0]
    return found[0].text
