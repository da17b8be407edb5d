"""Azure Translator (REST v3) backend: the paper's translator for VisIT-Bench (appendix D).

Credentials come from the environment (never from files in the repo):
    AZURE_TRANSLATOR_KEY       resource key (required)
    AZURE_TRANSLATOR_REGION    resource region, e.g. "westeurope" (required for regional and
                               multi-service resources; leave unset for a global resource)
    AZURE_TRANSLATOR_ENDPOINT  default https://api.cognitive.microsofttranslator.com

One request: POST {endpoint}/translate?api-version=3.0&from=en&to=de with body
[{"Text": "..."}, ...] (at most 1,000 elements and 50,000 characters); the answer is
[{"translations": [{"text": "...", "to": "de"}]}, ...] in input order. 429 and 5xx are retried
with exponential backoff (or the server's Retry-After).

>>> azure_code("zh"), azure_code("he")
('zh-Hans', 'he')
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable, Mapping

from ifl.data.languages import get as get_language

ENV_KEY, ENV_REGION, ENV_ENDPOINT = ("AZURE_TRANSLATOR_KEY", "AZURE_TRANSLATOR_REGION",
                                     "AZURE_TRANSLATOR_ENDPOINT")
DEFAULT_ENDPOINT = "https://api.cognitive.microsofttranslator.com"
MAX_ELEMENTS, MAX_CHARS = 1000, 50_000  # Azure's per-request limits for /translate
# Azure uses BCP-47-like codes; for the paper's languages only Chinese differs from ISO 639-1
AZURE_CODES = {"zh": "zh-Hans"}

# (url, headers, body, timeout_s) -> (status, response headers, response body)
HttpPost = Callable[[str, Mapping[str, str], bytes, float], "tuple[int, Mapping[str, str], bytes]"]


def azure_code(iso: str) -> str:
    return AZURE_CODES.get(get_language(iso).iso, iso)


class AzureTranslatorError(RuntimeError):
    pass


def urllib_post(url: str, headers: Mapping[str, str], body: bytes,
                timeout_s: float) -> tuple[int, Mapping[str, str], bytes]:
    """The default HTTP layer (stdlib): HTTP errors come back as statuses, not exceptions."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {}), err.read()


class AzureTranslator:
    """`translate_batch` through Azure Translator v3; `http` is injectable (tests use a fake)."""

    backend_id = "azure-translator:v3"

    def __init__(self, key: str | None = None, region: str | None = None,
                 endpoint: str | None = None, http: HttpPost = urllib_post,
                 max_retries: int = 6, backoff_s: float = 1.0, timeout_s: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.key = key or os.environ.get(ENV_KEY)
        if not self.key:
            raise AzureTranslatorError(f"no Azure Translator key: set the environment variable "
                                       f"{ENV_KEY} (and {ENV_REGION} for a regional resource)")
        self.region = region or os.environ.get(ENV_REGION)
        self.endpoint = (endpoint or os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT).rstrip("/")
        self.http, self.sleep = http, sleep
        self.max_retries, self.backoff_s, self.timeout_s = max_retries, backoff_s, timeout_s

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        out: list[str] = []
        for chunk in _chunks(texts):
            out += self._request(chunk, azure_code(src), azure_code(tgt))
        return out

    def _request(self, texts: list[str], src: str, tgt: str) -> list[str]:
        query = urllib.parse.urlencode({"api-version": "3.0", "from": src, "to": tgt})
        url = f"{self.endpoint}/translate?{query}"
        headers = {"Ocp-Apim-Subscription-Key": self.key,
                   "Content-Type": "application/json; charset=UTF-8",
                   "X-ClientTraceId": str(uuid.uuid4())}
        if self.region:
            headers["Ocp-Apim-Subscription-Region"] = self.region
        body = json.dumps([{"Text": t} for t in texts], ensure_ascii=False).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                status, response_headers, payload = self.http(url, headers, body, self.timeout_s)
            except OSError as exc:  # connection reset, DNS, timeout: transient, like a 5xx
                status, response_headers, payload = None, {}, str(exc).encode()
            if status == 200:
                return [item["translations"][0]["text"] for item in json.loads(payload)]
            retriable = status is None or status == 429 or status >= 500
            if not retriable or attempt == self.max_retries:
                raise AzureTranslatorError(_describe(status, payload, attempt))
            self.sleep(_wait_s(response_headers, self.backoff_s * 2 ** attempt))
        raise AssertionError("unreachable")


def _chunks(texts: list[str]):
    """Split a batch to respect Azure's per-request element and character limits."""
    chunk: list[str] = []
    chars = 0
    for text in texts:
        if len(text) > MAX_CHARS:
            raise ValueError(f"text of {len(text)} characters exceeds Azure's {MAX_CHARS}")
        if chunk and (len(chunk) == MAX_ELEMENTS or chars + len(text) > MAX_CHARS):
            yield chunk
            chunk, chars = [], 0
        chunk.append(text)
        chars += len(text)
    if chunk:
        yield chunk


def _wait_s(headers: Mapping[str, str], default: float) -> float:
    """Honour Retry-After (seconds) when the server sends it; never wait more than a minute."""
    value = {k.lower(): v for k, v in headers.items()}.get("retry-after")
    try:
        return min(60.0, float(value)) if value is not None else min(60.0, default)
    except ValueError:
        return min(60.0, default)


def _describe(status: int | None, payload: bytes, attempt: int) -> str:
    try:
        error = json.loads(payload)["error"]
        detail = f"{error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError):
        detail = payload[:300].decode("utf-8", "replace")
    hint = (f" (check {ENV_KEY} / {ENV_REGION})" if status in (401, 403) else "")
    return f"Azure Translator HTTP {status} after {attempt + 1} attempt(s): {detail}{hint}"
