"""One translation of storage failures into one line: what was being done to which URL, why it failed, the fix.

Every place Seamline opens a URL — inputs, the work folder, outputs, ``evaluate``, training data, ``watch``'s
source and destination, ``diff`` — goes through :mod:`pipeline.io.storage`, and its failures through
:func:`storage_error`. The backends raise their own types (botocore, aiohttp, gcsfs, adlfs, OS errors); what
matters to the user is one of a few causes, each with its own fix:

* the endpoint refuses connections, or its host name does not resolve, or it does not answer in time;
* no credentials, or credentials the store rejects (401, invalid key, bad signature, expired token);
* this identity may not read / write / list it (403, AccessDenied);
* the bucket or the object does not exist (404);
* no filesystem for the URL's scheme (its fsspec backend is not installed).

Failing fast matters as much as the message: :func:`configure_fast_failures` caps the S3 client's connect
timeout and retries, so a refused endpoint answers in seconds, not after the SDK's default back-off.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import fsspec.config

from pipeline.errors import InputError

__all__ = ["storage_error", "endpoint_of", "configure_fast_failures", "cause_of"]

#: What a failed operation was doing, for the permission line: "may not <verb> it".
_VERBS = {"reading": "read", "listing": "list", "writing": "write", "deleting": "delete"}


def configure_fast_failures() -> None:
    """Defaults for S3 clients made after this call (user settings in fsspec's config and AWS_MAX_ATTEMPTS /
    AWS_RETRY_MODE win): a 5 s connect timeout and 2 attempts per request. s3fs retries on top of botocore,
    so a refused endpoint fails in a few seconds instead of a minute."""
    s3 = fsspec.config.conf.setdefault("s3", {})
    ck = s3.setdefault("config_kwargs", {})
    ck.setdefault("connect_timeout", 5)
    if "AWS_MAX_ATTEMPTS" not in os.environ and "AWS_RETRY_MODE" not in os.environ:
        ck.setdefault("retries", {"max_attempts": 2, "mode": "standard"})


def endpoint_of(url: str) -> str:
    """The service a URL is served by, as the user configured it: the S3 endpoint (``AWS_ENDPOINT_URL``, or
    AWS's own), the HTTP host, or the cloud's name."""
    scheme = urlsplit(str(url).split("::")[-1]).scheme.lower()
    if scheme in ("s3", "s3a"):
        ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return ep if ep else "AWS S3 (no AWS_ENDPOINT_URL set)"
    if scheme in ("http", "https"):
        parts = urlsplit(str(url).split("::")[-1])
        return f"{parts.scheme}://{parts.netloc}"
    return {"gs": "Google Cloud Storage", "gcs": "Google Cloud Storage", "az": "Azure Blob Storage",
            "abfs": "Azure Blob Storage", "abfss": "Azure Blob Storage"}.get(scheme, scheme or "local disk")


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)  # botocore ClientError
    if isinstance(resp, dict):
        code = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code:
            return int(code)
    for attr in ("status", "code", "status_code"):  # aiohttp ClientResponseError, gcsfs HttpError, azure
        v = getattr(e, attr, None)
        if isinstance(v, int) and 100 <= v < 600:
            return v
    return None


def _code(e: BaseException) -> str:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""


def cause_of(exc: BaseException) -> tuple[str, str]:
    """``(cause, detail)``: the cause is one of ``refused``, ``dns``, ``timeout``, ``no-credentials``,
    ``credentials``, ``forbidden``, ``no-bucket``, ``not-found``, ``no-backend``, ``other``; the detail is the
    backend's own short reason (an error code or the first line of its message)."""
    chain = _chain(exc)
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    codes = [c for c in (_code(e) for e in chain) if c]
    statuses = [s for s in (_status(e) for e in chain) if s]
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    detail = codes[0] if codes else first
    if any(isinstance(e, socket.gaierror) for e in chain) or "name or service not known" in text \
            or "temporary failure in name resolution" in text or "nodename nor servname" in text:
        return "dns", detail
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in text \
            or "connect call failed" in text:
        return "refused", detail
    if "nocredentials" in text or "unable to locate credentials" in text or "no credentials" in text:
        return "no-credentials", "no credentials found"
    if any(c in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AuthFailure")
           for c in codes) or 401 in statuses:
        return "credentials", detail
    if any(c in ("AccessDenied", "Forbidden", "AllAccessDisabled") for c in codes) or 403 in statuses \
            or any(isinstance(e, PermissionError) for e in chain) or "access denied" in text or "forbidden" in text:
        return "forbidden", detail
    if "NoSuchBucket" in codes or "bucket does not exist" in text:
        return "no-bucket", detail
    if any(isinstance(e, FileNotFoundError) for e in chain) or 404 in statuses or "NoSuchKey" in codes:
        return "not-found", detail
    if any(isinstance(e, (TimeoutError, socket.timeout)) for e in chain) or "timeout" in text or "timed out" in text:
        return "timeout", detail
    if any(isinstance(e, ImportError) for e in chain) or "protocol not known" in text or "no module named" in text:
        return "no-backend", detail
    if "could not connect to the endpoint" in text or "cannot connect to host" in text:
        return "refused", detail
    return "other", detail


def _bucket(url: str) -> str:
    return urlsplit(str(url).split("::")[-1]).netloc


def storage_error(url: str, exc: BaseException, doing: str, what: str = "") -> InputError:
    """One line for a storage failure: ``<what> <url>: <doing> failed: <why>; <fix>``.

    ``what`` names the parameter (``input``, ``--out``, ``work folder``, ``watch source``…); ``doing`` is
    ``reading``, ``writing``, ``listing``…"""
    name = f"{what} {url}".strip()
    cause, detail = cause_of(exc)
    ep = endpoint_of(url)
    verb = next((v for k, v in _VERBS.items() if doing.startswith(k)), "use")
    why, fix = {
        "refused": (f"the storage endpoint {ep} refuses connections",
                    "start the storage service, or point AWS_ENDPOINT_URL at a running one"),
        "dns": (f"the host of {ep} is not found (DNS)", "check the endpoint address (AWS_ENDPOINT_URL) and the network"),
        "timeout": (f"{ep} did not answer in time ({detail})", "check the network and that the endpoint is up"),
        "no-credentials": ("no credentials were found for it",
                           "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or the store's own credentials"),
        "credentials": (f"the store rejected the credentials ({detail})",
                        "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to valid credentials"),
        "forbidden": (f"this identity may not {verb} it ({detail})",
                      f"grant this identity {verb} access to it (its policy), use credentials that have it "
                      "(AWS_PROFILE), or choose another location"),
        "no-bucket": (f"the bucket {_bucket(url)} does not exist", "create the bucket or correct its name"),
        "not-found": ("not found", "check the URL (bucket and key) or the path"),
        "no-backend": (f"no filesystem for this URL's scheme ({detail})",
                       "install its fsspec backend (s3fs is included; pip install 'seamline[gcs]' or 'seamline[azure]', "
                       "aiohttp for https://)"),
        "other": (detail, "check the URL, the credentials and the endpoint"),
    }[cause]
    return InputError(f"{name}: {doing} failed: {why}; {fix}")
