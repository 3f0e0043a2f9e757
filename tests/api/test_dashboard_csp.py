"""The dashboard's Content-Security-Policy: scripts and styles from this origin only, no
inline script or style, no framing; and the page itself keeps to it."""
import re
from html.parser import HTMLParser


def directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_the_dashboard_sends_a_strict_csp(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = directives(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    for name in ("default-src", "script-src", "style-src"):
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"} & set(csp[name])
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]


class _Inline(HTMLParser):
    def __init__(self):
        super().__init__()
        self.problems, self._in_script = [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "style":
            self.problems.append("<style> element")
        if "style" in attrs:
            self.problems.append(f"style attribute on <{tag}>")
        if any(a.startswith("on") for a in attrs):
            self.problems.append(f"inline handler on <{tag}>")
        if tag == "script":
            self._in_script = "src" not in attrs
            if not attrs.get("src", "/").startswith("/static/"):
                self.problems.append(f"script from {attrs.get('src')}")
        if tag == "link" and attrs.get("rel") == "stylesheet" and not attrs.get("href", "").startswith("/static/"):
            self.problems.append(f"stylesheet from {attrs.get('href')}")

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("inline script")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False


def test_the_page_has_no_inline_script_or_style(client):
    parser = _Inline()
    parser.feed(client.get("/").text)
    assert parser.problems == []
    js = client.get("/static/app.js").text
    # The script never writes markup with inline styles or handlers that the CSP would block.
    assert not re.search(r"""\.innerHTML\s*=|setAttribute\(\s*["']style|\bon[a-z]+\s*=\s*["']""", js)
