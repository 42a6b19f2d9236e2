"""A local OpenAI-compatible HTTP server: the only stand-in in the test suite.

The real ``openai`` SDK talks to it over real HTTP (SDK v3 uses httpx2, which ``respx`` cannot patch), so the
SDK's own request building, response parsing, pagination and retry logic all run for real. The server
reproduces the public fine-tuning API (https://platform.openai.com/docs/api-reference/fine-tuning):
files, the job state machine advanced per retrieve, events, checkpoints, a base64-encoded results CSV, cursor
list envelopes, the error envelope with ``x-request-id``, injectable 429/5xx faults, creates whose answer is lost
after the server acted (``lose_after_success``), listings that lag behind (``hide_from_lists``) and chat
completions for base and ``ft:`` models. Standard library only; state lives in one object guarded by one lock.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import hashlib
import json
import math
import random
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
RESULTS_CSV_HEADER = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
MIN_TRAINING_EXAMPLES = 10
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
CREATE_ENDPOINTS = ("POST /files", "POST /fine_tuning/jobs")
LOST_KINDS = ("500", "drop")

# Models accepted by POST /fine_tuning/jobs (plus any `ft:` model this server created).
FINE_TUNABLE_MODELS = frozenset(
    {
        "babbage-002",
        "davinci-002",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-0613",
        "gpt-3.5-turbo-1106",
        "gpt-3.5-turbo-0125",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        "gpt-4o",
        "gpt-4o-2024-08-06",
        "gpt-4.1",
        "gpt-4.1-2025-04-14",
        "gpt-4.1-mini",
        "gpt-4.1-mini-2025-04-14",
        "gpt-4.1-nano",
        "gpt-4.1-nano-2025-04-14",
    }
)
# Base models POST /chat/completions answers for (anything else that is not a known `ft:` model is a 404).
CHAT_MODEL_PATTERN = re.compile(r"^(gpt-[0-9][\w.\-]*|o[1-9][\w.\-]*|chatgpt-[\w.\-]+)$")

JOB_CREATE_KEYS = frozenset(
    {
        "model",
        "training_file",
        "validation_file",
        "hyperparameters",
        "integrations",
        "metadata",
        "method",
        "seed",
        "suffix",
    }
)
HYPERPARAMETER_RULES: dict[str, dict[str, tuple[type, float, float]]] = {
    # name -> (type, minimum, maximum); every value may also be "auto".
    "supervised": {
        "batch_size": (int, 1, 256),
        "learning_rate_multiplier": (float, 1e-9, 10.0),
        "n_epochs": (int, 1, 50),
    },
    "dpo": {
        "batch_size": (int, 1, 256),
        "beta": (float, 1e-9, 2.0),
        "learning_rate_multiplier": (float, 1e-9, 10.0),
        "n_epochs": (int, 1, 50),
    },
    "reinforcement": {
        "batch_size": (int, 1, 256),
        "compute_multiplier": (float, 1e-9, 10.0),
        "eval_interval": (int, 1, 1000),
        "eval_samples": (int, 1, 1000),
        "learning_rate_multiplier": (float, 1e-9, 10.0),
        "n_epochs": (int, 1, 50),
    },
}
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight"})

_WORD = re.compile(r"\w+|[^\w\s]")
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_ALNUM = string.ascii_letters + string.digits


def count_tokens(text: str) -> int:
    """Approximate token count (words and punctuation): the server only needs stable, plausible numbers."""
    return len(_WORD.findall(text))


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def count_message_tokens(messages: list[dict[str, Any]]) -> int:
    """The cookbook's per-message formula: 3 per message + content (+1 per name) + 3 for the reply priming."""
    total = 3
    for message in messages:
        total += 3 + count_tokens(_message_text(message)) + count_tokens(str(message.get("role", "")))
        if "name" in message:
            total += 1
    return total


class ApiError(Exception):
    """An error answered with OpenAI's envelope {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers or {}


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without writing a response


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode(), headers=headers or {})


@dataclass
class _StoredFile:
    obj: dict[str, Any]
    content: bytes


@dataclass
class _JobState:
    """Server-side bookkeeping of one job besides the public object."""

    obj: dict[str, Any]
    polls: int = 0
    fail_with: dict[str, Any] | None = None
    n_examples: int = 0
    example_tokens: int = 0
    plan: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per step
    revealed_steps: int = 0
    steps_per_epoch: int = 1
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    pairs: list[tuple[set[str], str]] = field(default_factory=list)  # (prompt words, completion) for inference


def _random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def _seeded_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class FakeOpenAI:
    """The server's state, knobs and observations; ``start()`` serves it on 127.0.0.1 in a daemon thread."""

    def __init__(self, *, organization: str = "fake-org") -> None:
        self.api_key = "sk-test-" + secrets.token_hex(12)
        self.organization = organization
        self.organization_id = "org-" + hashlib.sha256(organization.encode()).hexdigest()[:24]
        self.chat_latency_s = 0.0
        self.polls_to_finish = 3
        self.chat_responder: Callable[[str, list[dict[str, Any]]], str] | None = None
        self.results_base64 = True  # the results CSV is stored base64-encoded, as the real API sometimes does
        self.fault_retry_after_ms = 10.0
        self.fault_should_retry: bool | None = None  # when set, faults carry `x-should-retry: true|false`
        self.base_url = ""
        self._lock = threading.RLock()
        self._files: dict[str, _StoredFile] = {}
        self._jobs: dict[str, _JobState] = {}
        self._uploads: list[dict[str, Any]] = []
        self._requests: list[tuple[str, str, int]] = []
        self._request_records: list[dict[str, Any]] = []
        self._fault_rate = 0.0
        self._fault_kinds: tuple[str, ...] = ("429", "500", "503")
        self._fault_rng = random.Random(0)
        self._fail_next: dict[str, Any] | None = None
        self._lose: dict[str, list[str]] = {}  # create endpoint -> kinds of the next lost answers, in order
        self._refuse: dict[str, int] = {}  # create endpoint -> calls still answered 503 before acting
        self._lost: list[dict[str, Any]] = []
        self._hidden: dict[str, int] = {}  # object id -> list calls that still omit it
        self._chat_calls = 0
        self._chat_in_flight = 0
        self._max_concurrent_chat = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> FakeOpenAI:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self) -> str:
        return self.base_url

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------- knobs
    def set_faults(self, rate: float, *, seed: int = 0, kinds: tuple[str, ...] = ("429", "500", "503")) -> None:
        """Answer that share of requests (seeded) with a 429 or a 5xx envelope, before auth or routing."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {rate!r}")
        unknown = [kind for kind in kinds if kind not in ("429", "500", "502", "503")]
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be among 429, 500, 502, 503; got {kinds!r}")
        with self._lock:
            self._fault_rate = rate
            self._fault_kinds = tuple(kinds)
            self._fault_rng = random.Random(seed)

    def lose_after_success(self, endpoint: str, *, kind: str = "500", times: int = 1) -> None:
        """The next ``times`` successful calls of ``endpoint`` act (the file or job exists and is listed), then
        lose the answer: a 500 envelope (``kind="500"``) or the connection closed without a response
        (``kind="drop"``). Calls add up in order, so a 500 then a drop is two calls."""
        if endpoint not in CREATE_ENDPOINTS:
            raise ValueError(f"lost answers are for the create endpoints {CREATE_ENDPOINTS}; got {endpoint!r}")
        if kind not in LOST_KINDS:
            raise ValueError(f"lost-answer kind must be one of {LOST_KINDS}; got {kind!r}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer; got {times!r}")
        with self._lock:
            self._lose.setdefault(endpoint, []).extend([kind] * times)

    def fail_before_acting(self, endpoint: str, *, times: int = 1) -> None:
        """The next ``times`` calls of a create endpoint answer 503 without acting (nothing is created)."""
        if endpoint not in CREATE_ENDPOINTS:
            raise ValueError(f"fail_before_acting is for the create endpoints {CREATE_ENDPOINTS}; got {endpoint!r}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer; got {times!r}")
        with self._lock:
            self._refuse[endpoint] = self._refuse.get(endpoint, 0) + times

    def hide_from_lists(self, object_id: str, *, times: int = 1) -> None:
        """The next ``times`` list calls that would show this file or job omit it: a listing that lags behind."""
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer; got {times!r}")
        with self._lock:
            if object_id not in self._files and object_id not in self._jobs:
                raise ValueError(f"no file or job {object_id!r} on this server")
            self._hidden[object_id] = times

    def fail_next_job(self, code: str, message: str, param: str | None = None) -> None:
        """The next created job ends ``failed`` with this error instead of succeeding."""
        with self._lock:
            self._fail_next = {"code": code, "message": message, "param": param}

    # ----------------------------------------------------------------------------------------- observation
    @property
    def uploads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._uploads]

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {job_id: json.loads(json.dumps(state.obj)) for job_id, state in self._jobs.items()}

    @property
    def lost_responses(self) -> list[dict[str, Any]]:
        """Each create whose answer was lost: endpoint, kind (``500`` or ``drop``) and the id it created."""
        with self._lock:
            return [dict(item) for item in self._lost]

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self._requests)

    @property
    def request_records(self) -> list[dict[str, Any]]:
        """Like ``requests`` with more detail: query, request id and the SDK's ``x-stainless-retry-count``."""
        with self._lock:
            return [dict(item) for item in self._request_records]

    @property
    def chat_calls(self) -> int:
        with self._lock:
            return self._chat_calls

    @property
    def max_concurrent_chat(self) -> int:
        with self._lock:
            return self._max_concurrent_chat

    # ----------------------------------------------------------------------------------------- dispatch
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Response:
        """Answer one request (called from the handler thread); never raises."""
        request_id = "req_" + uuid.uuid4().hex
        parts = urlsplit(raw_path)
        path = parts.path.rstrip("/") or "/"
        query = parse_qsl(parts.query, keep_blank_values=True)
        lost: str | None = None
        try:
            self._fault()
            self._refuse_create(method, path)
            response = self._route(method, path, query, headers, body)
            lost = self._lose_answer(method, path, response)
            if lost == "500":
                response = _json_response(
                    {"error": {"message": _SERVER_ERROR, "type": "server_error", "param": None, "code": None}}, 500
                )
            elif lost == "drop":
                response = _Response(0, b"", drop=True)
        except ApiError as err:
            response = _json_response(err.body, err.status, err.headers)
        except Exception as err:  # a bug in the fake must surface as a 500, not hang the client
            response = _json_response(
                {
                    "error": {
                        "message": f"fake server bug: {err!r}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                500,
                {"x-should-retry": "false"},
            )
        response.headers.setdefault("x-request-id", request_id)
        response.headers.setdefault("openai-organization", self.organization)
        response.headers.setdefault("openai-version", "2020-10-01")
        response.headers.setdefault("openai-processing-ms", "1")
        with self._lock:
            self._requests.append((method, path, response.status))
            self._request_records.append(
                {
                    "method": method,
                    "path": path,
                    "query": parts.query,
                    "status": response.status,
                    "request_id": response.headers["x-request-id"],
                    "retry_count": headers.get("x-stainless-retry-count"),
                    "lost": lost,
                }
            )
        return response

    def _refuse_create(self, method: str, path: str) -> None:
        endpoint = f"{method} {path.removeprefix('/v1')}"
        with self._lock:
            if self._refuse.get(endpoint, 0) <= 0:
                return
            self._refuse[endpoint] -= 1
        raise ApiError(503, "The server is overloaded or not ready yet.", type="server_error")

    def _lose_answer(self, method: str, path: str, response: _Response) -> str | None:
        """Consume one pending lost answer for this create endpoint, if the create succeeded."""
        endpoint = f"{method} {path.removeprefix('/v1')}"
        if not 200 <= response.status < 300:
            return None
        with self._lock:
            pending = self._lose.get(endpoint)
            if not pending:
                return None
            kind = pending.pop(0)
            self._lost.append({"endpoint": endpoint, "kind": kind, "id": json.loads(response.body).get("id")})
        return kind

    def _listed(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items minus those ``hide_from_lists`` still hides; each list call that would show one counts it down."""
        with self._lock:
            shown = []
            for item in items:
                if self._hidden.get(item["id"], 0) > 0:
                    self._hidden[item["id"]] -= 1
                else:
                    shown.append(item)
        return shown

    def _fault(self) -> None:
        """Raise the injected 429/5xx for this request, if the seeded draw says so."""
        with self._lock:
            if self._fault_rate <= 0.0 or self._fault_rng.random() >= self._fault_rate:
                return
            kind = self._fault_rng.choice(self._fault_kinds)
            retry_after_ms = self.fault_retry_after_ms
            should_retry = self.fault_should_retry
        extra = {} if should_retry is None else {"x-should-retry": "true" if should_retry else "false"}
        if kind == "429":
            raise ApiError(
                429,
                "Rate limit reached for requests in organization "
                f"{self.organization_id} on requests per min (RPM): Limit 500, Used 500, Requested 1. "
                f"Please try again in {retry_after_ms:g}ms. "
                "Visit https://platform.openai.com/account/rate-limits to learn more.",
                type="requests",
                code="rate_limit_exceeded",
                headers={
                    "retry-after-ms": f"{retry_after_ms:g}",
                    "retry-after": str(max(1, math.ceil(retry_after_ms / 1000))),
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{retry_after_ms:g}ms",
                    **extra,
                },
            )
        messages = {
            "500": _SERVER_ERROR,
            "502": "Bad gateway.",
            "503": "The server is overloaded or not ready yet.",
        }
        raise ApiError(int(kind), messages[kind], type="server_error", headers=extra)

    def _route(
        self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes
    ) -> _Response:
        self._authenticate(headers)
        segments = [unquote(s) for s in path.split("/") if s]
        if not segments or segments[0] != "v1":
            raise ApiError(404, f"Invalid URL ({method} {path})")
        route = segments[1:]
        params = dict(query)
        match (method, route):
            case ("POST", ["files"]):
                return self._create_file(headers, body)
            case ("GET", ["files"]):
                return self._list_files(params)
            case ("GET", ["files", file_id]):
                return _json_response(self._get_file(file_id).obj)
            case ("GET", ["files", file_id, "content"]):
                stored = self._get_file(file_id)
                return _Response(200, stored.content, content_type="application/octet-stream")
            case ("DELETE", ["files", file_id]):
                return self._delete_file(file_id)
            case ("POST", ["fine_tuning", "jobs"]):
                return self._create_job(_json_body(body))
            case ("GET", ["fine_tuning", "jobs"]):
                return self._list_jobs(query)
            case ("GET", ["fine_tuning", "jobs", job_id]):
                return self._retrieve_job(job_id)
            case ("POST", ["fine_tuning", "jobs", job_id, "cancel"]):
                return self._cancel_job(job_id)
            case ("GET", ["fine_tuning", "jobs", job_id, "events"]):
                with self._lock:
                    events = list(reversed(self._job_state(job_id).events))
                return self._page(events, params, default_limit=20, max_limit=100)
            case ("GET", ["fine_tuning", "jobs", job_id, "checkpoints"]):
                with self._lock:
                    checkpoints = list(reversed(self._job_state(job_id).checkpoints))
                return self._page(checkpoints, params, default_limit=10, max_limit=100)
            case ("POST", ["chat", "completions"]):
                return self._chat(_json_body(body))
        raise ApiError(404, f"Invalid URL ({method} {path})")

    def _authenticate(self, headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if key != self.api_key:
            if not key:
                raise ApiError(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            masked = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)
            raise ApiError(
                401,
                f"Incorrect API key provided: {masked}. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _now(self) -> int:
        return int(time.time())

    # ----------------------------------------------------------------------------------------- lists
    def _page(
        self,
        items: list[dict[str, Any]],
        params: dict[str, str],
        *,
        default_limit: int,
        max_limit: int,
    ) -> _Response:
        """Cursor pagination: ``after`` is the id of the last item of the previous page (items already ordered)."""
        limit = _int_param(params, "limit", default_limit, max_limit)
        after = params.get("after")
        if after:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return _json_response(
            {
                "object": "list",
                "data": page,
                "has_more": len(items) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    # ----------------------------------------------------------------------------------------- files
    def _create_file(self, headers: dict[str, str], body: bytes) -> _Response:
        content_type = headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "The request must be multipart/form-data with the fields 'file' and 'purpose'.")
        form = _parse_multipart(content_type, body)
        purpose_field = form.get("purpose")
        purpose = purpose_field[1].decode() if purpose_field else None
        if purpose is None:
            raise ApiError(
                400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in FILE_PURPOSES:
            allowed = ", ".join(repr(p) for p in FILE_PURPOSES)
            raise ApiError(400, f"{purpose!r} is not one of [{allowed}] - 'purpose'", param="purpose")
        file_field = form.get("file")
        filename, content = file_field if file_field is not None else (None, b"")
        if filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if purpose == "fine-tune" and not filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
        stored = self._store_file(filename, purpose, content)
        with self._lock:
            self._uploads.append(
                {
                    "id": stored.obj["id"],
                    "filename": filename,
                    "purpose": purpose,
                    "bytes": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                }
            )
        return _json_response(stored.obj)

    def _store_file(self, filename: str, purpose: str, content: bytes) -> _StoredFile:
        file_id = _random_id("file-")
        obj: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": self._now(),
            "expires_at": None,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        stored = _StoredFile(obj, content)
        with self._lock:
            self._files[file_id] = stored
        return stored

    def _get_file(self, file_id: str) -> _StoredFile:
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def _list_files(self, params: dict[str, str]) -> _Response:
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid value for 'order': expected 'asc' or 'desc', got {order!r}.", param="order")
        with self._lock:
            files = [stored.obj for stored in self._files.values()]
        if purpose := params.get("purpose"):
            files = [obj for obj in files if obj["purpose"] == purpose]
        if order == "desc":
            files.reverse()
        return self._page(self._listed(files), params, default_limit=10000, max_limit=10000)

    def _delete_file(self, file_id: str) -> _Response:
        self._get_file(file_id)
        with self._lock:
            self._files.pop(file_id, None)
        return _json_response({"id": file_id, "object": "file", "deleted": True})

    # ----------------------------------------------------------------------------------------- jobs
    def _job_state(self, job_id: str) -> _JobState:
        with self._lock:
            state = self._jobs.get(job_id)
        if state is None:
            raise ApiError(404, f"Fine-tuning job {job_id} not found.", param="fine_tuning_job_id")
        return state

    def _check_file_param(self, params: dict[str, Any], name: str) -> str | None:
        file_id = params.get(name)
        if file_id is None and name == "validation_file":
            return None
        if not isinstance(file_id, str) or not file_id:
            raise ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:
            raise ApiError(400, f"invalid {name}: {file_id} (no such file)", param=name, code="invalid_file")
        if stored.obj["purpose"] != "fine-tune":
            raise ApiError(
                400,
                f"File {file_id} has purpose {stored.obj['purpose']!r}, but {name} must have purpose 'fine-tune'.",
                param=name,
                code="invalid_file_purpose",
            )
        return file_id

    def _create_job(self, params: dict[str, Any]) -> _Response:
        unknown = sorted(set(params) - JOB_CREATE_KEYS)
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
        model = params.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        method = params.get("method")
        method_type = "supervised"
        if method is not None:
            if not isinstance(method, dict) or method.get("type") not in HYPERPARAMETER_RULES:
                raise ApiError(
                    400,
                    "Invalid value for 'method.type': expected one of 'supervised', 'dpo', 'reinforcement'.",
                    param="method.type",
                )
            method_type = method["type"]
        if method_type == "reinforcement":
            raise ApiError(400, "This test server does not implement reinforcement fine-tuning.", param="method.type")
        if not self._fine_tunable(model):
            raise ApiError(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        training_file = self._check_file_param(params, "training_file")
        validation_file = self._check_file_param(params, "validation_file")
        if training_file is not None and training_file == validation_file:
            raise ApiError(400, "training_file and validation_file must be different files.", param="validation_file")
        hyperparameters = self._requested_hyperparameters(params, method, method_type)
        suffix = params.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not 1 <= len(suffix) <= 64):
            raise ApiError(
                400, f"Invalid 'suffix': expected a string of 1 to 64 characters, got {suffix!r}.", param="suffix"
            )
        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1):
            raise ApiError(400, f"Invalid 'seed': expected an integer in [0, 2147483647], got {seed!r}.", param="seed")
        metadata = _check_metadata(params.get("metadata"))
        integrations = params.get("integrations")
        if integrations is not None and (
            not isinstance(integrations, list)
            or any(not isinstance(i, dict) or i.get("type") != "wandb" or "wandb" not in i for i in integrations)
        ):
            raise ApiError(
                400,
                "Invalid 'integrations': only {'type': 'wandb', 'wandb': {...}} is supported.",
                param="integrations",
            )

        job_id = _random_id("ftjob-")
        if seed is None:
            seed = _seeded_rng(job_id).randrange(2**31)
        method_obj: dict[str, Any] = {"type": method_type, method_type: {"hyperparameters": dict(hyperparameters)}}
        obj: dict[str, Any] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": self._now(),
            "error": None,
            "estimated_finish": None,
            "fine_tuned_model": None,
            "finished_at": None,
            # The SDK's FineTuningJob requires it: the three hyperparameters every method shares.
            "hyperparameters": {k: hyperparameters[k] for k in ("batch_size", "learning_rate_multiplier", "n_epochs")},
            "integrations": integrations,
            "metadata": metadata,
            "method": method_obj,
            "model": model,
            "organization_id": self.organization_id,
            "result_files": [],
            "seed": seed,
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": training_file,
            "validation_file": validation_file,
            "user_provided_suffix": suffix,
        }
        state = _JobState(obj)
        with self._lock:
            state.fail_with, self._fail_next = self._fail_next, None
            self._jobs[job_id] = state
            self._event(state, f"Created fine-tuning job: {job_id}")
            files = f"training file: {training_file}" + (
                f" and validation file: {validation_file}" if validation_file else ""
            )
            self._event(state, f"Validating {files}")
        return _json_response(obj)

    def _fine_tunable(self, model: str) -> bool:
        if model.startswith("ft:"):
            with self._lock:
                return any(s.obj["fine_tuned_model"] == model for s in self._jobs.values())
        return model in FINE_TUNABLE_MODELS

    def _requested_hyperparameters(
        self, params: dict[str, Any], method: dict[str, Any] | None, method_type: str
    ) -> dict[str, Any]:
        top_level = params.get("hyperparameters")
        nested: Any = None
        if method is not None:
            section = method.get(method_type)
            if section is not None and not isinstance(section, dict):
                raise ApiError(
                    400, f"Invalid 'method.{method_type}': expected an object.", param=f"method.{method_type}"
                )
            nested = (section or {}).get("hyperparameters")
            if top_level is not None and nested is not None:
                raise ApiError(
                    400,
                    "Specify hyperparameters either in 'method' or in the deprecated top-level 'hyperparameters', "
                    "not both.",
                    param="hyperparameters",
                )
        given, where = (
            (nested, f"method.{method_type}.hyperparameters") if nested is not None else (top_level, "hyperparameters")
        )
        rules = HYPERPARAMETER_RULES[method_type]
        resolved: dict[str, Any] = dict.fromkeys(rules, "auto")
        if given is None:
            return resolved
        if not isinstance(given, dict):
            raise ApiError(400, f"Invalid '{where}': expected an object.", param=where)
        for name, value in given.items():
            if name not in rules:
                raise ApiError(
                    400,
                    f"Unrecognized hyperparameter '{name}' in '{where}'; expected one of {sorted(rules)}.",
                    param=f"{where}.{name}",
                )
            kind, low, high = rules[name]
            if value == "auto":
                continue
            ok_type = not isinstance(value, bool) and (
                isinstance(value, int) if kind is int else isinstance(value, int | float)
            )
            if not ok_type or not low <= value <= high:
                expected = "an integer" if kind is int else "a number"
                raise ApiError(
                    400,
                    f"Invalid value for '{where}.{name}': expected 'auto' or {expected} "
                    f"in [{low:g}, {high:g}], got {value!r}.",
                    param=f"{where}.{name}",
                    code="invalid_hyperparameter",
                )
            resolved[name] = value
        return resolved

    def _retrieve_job(self, job_id: str) -> _Response:
        with self._lock:
            state = self._job_state(job_id)
            if state.obj["status"] not in TERMINAL_STATUSES:
                state.polls += 1
                self._advance(state)
            return _json_response(json.loads(json.dumps(state.obj)))

    def _list_jobs(self, query: list[tuple[str, str]]) -> _Response:
        params = dict(query)
        wanted: dict[str, str] = {}
        for key, value in query:
            if key.startswith("metadata[") and key.endswith("]"):
                wanted[key[len("metadata[") : -1]] = value
        with self._lock:
            jobs = [json.loads(json.dumps(s.obj)) for s in reversed(list(self._jobs.values()))]
        if wanted:
            jobs = [job for job in jobs if all((job["metadata"] or {}).get(k) == v for k, v in wanted.items())]
        return self._page(self._listed(jobs), params, default_limit=20, max_limit=100)

    def _cancel_job(self, job_id: str) -> _Response:
        with self._lock:
            state = self._job_state(job_id)
            status = state.obj["status"]
            if status in TERMINAL_STATUSES:
                raise ApiError(
                    400,
                    f"Job {job_id} has already {'been cancelled' if status == 'cancelled' else status}; "
                    "it cannot be cancelled.",
                )
            state.obj.update(status="cancelled", finished_at=self._now(), estimated_finish=None)
            self._event(state, "Fine-tuning job cancelled")
            return _json_response(json.loads(json.dumps(state.obj)))

    # ----------------------------------------------------------------------------------------- state machine
    def _stage_for(self, polls: int) -> str:
        """validating_files -> queued -> running over the first polls, terminal at ``polls_to_finish``."""
        finish = max(1, self.polls_to_finish)
        if polls >= finish:
            return "done"
        if polls == 1 and finish > 2:
            return "queued"
        return "running"

    def _advance(self, state: _JobState) -> None:
        obj = state.obj
        if obj["status"] == "validating_files":
            error = self._validate_files(state)
            if error is not None:
                self._finish_failed(state, error)
                return
            self._resolve_hyperparameters(state)
            self._event(state, "Files validated, moving job to queued state")
            obj["status"] = "queued"
        stage = self._stage_for(state.polls)
        if stage == "queued":
            return
        if obj["status"] == "queued":
            obj["status"] = "running"
            obj["estimated_finish"] = self._now() + 60 * max(1, self.polls_to_finish - state.polls)
            self._event(state, "Fine-tuning job started")
            self._plan_training(state)
        if stage == "running":
            finish = max(1, self.polls_to_finish)
            # Reveal training progress in proportion to the polls spent running.
            self._reveal_steps(state, len(state.plan) * state.polls // (finish + 1))
            return
        self._reveal_steps(state, len(state.plan))
        if state.fail_with is not None:
            self._finish_failed(state, state.fail_with)
            return
        self._finish_succeeded(state)

    def _event(
        self, state: _JobState, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        state.events.append(
            {
                "id": _random_id("ftevent-"),
                "object": "fine_tuning.job.event",
                "created_at": self._now(),
                "level": level,
                "message": message,
                "data": data,
                "type": "metrics" if data is not None else "message",
            }
        )

    def _finish_failed(self, state: _JobState, error: dict[str, Any]) -> None:
        state.obj.update(
            status="failed",
            error={"code": error["code"], "message": error["message"], "param": error.get("param")},
            finished_at=self._now(),
            estimated_finish=None,
        )
        self._event(state, error["message"], level="error")

    def _validate_files(self, state: _JobState) -> dict[str, Any] | None:
        """The checks the real API runs while ``validating_files`` (format rules, size and token limits)."""
        method_type = state.obj["method"]["type"]
        for param in ("training_file", "validation_file"):
            file_id = state.obj[param]
            if file_id is None:
                continue
            with self._lock:
                stored = self._files.get(file_id)
            if stored is None:
                return {
                    "code": "invalid_file",
                    "message": f"The {param} {file_id} was deleted before validation.",
                    "param": param,
                }
            problem, examples = _parse_training_jsonl(stored.content, method_type)
            if problem is not None:
                return {
                    "code": "invalid_training_file" if param == "training_file" else "invalid_validation_file",
                    "message": f"The job failed due to an invalid {param.replace('_', ' ')}. "
                    f"Invalid file format. {problem}",
                    "param": param,
                }
            if param == "training_file":
                if len(examples) < MIN_TRAINING_EXAMPLES:
                    return {
                        "code": "invalid_n_examples",
                        "message": f"Training file has {len(examples)} example(s), but must have at least "
                        f"{MIN_TRAINING_EXAMPLES} examples",
                        "param": "training_file",
                    }
                state.n_examples = len(examples)
                state.example_tokens = sum(count_message_tokens(_example_messages(e)) for e in examples)
                state.pairs = [pair for e in examples if (pair := _prompt_completion(_example_messages(e)))]
        return None

    def _resolve_hyperparameters(self, state: _JobState) -> None:
        """Replace "auto" with concrete values once the file is validated, as the real API does."""
        n = state.n_examples
        epochs = 3
        if n * 3 < 100:
            epochs = min(25, 100 // n)
        elif n * 3 > 25000:
            epochs = max(1, 25000 // n)
        defaults = {
            "n_epochs": epochs,
            "batch_size": max(1, min(256, round(n * 0.002))),
            "learning_rate_multiplier": 1.8,
            "beta": 0.1,
        }
        method = state.obj["method"]
        hyper = method[method["type"]]["hyperparameters"]
        for name, value in hyper.items():
            if value == "auto":
                hyper[name] = defaults[name]
        state.obj["hyperparameters"] = {k: hyper[k] for k in ("batch_size", "learning_rate_multiplier", "n_epochs")}

    def _plan_training(self, state: _JobState) -> None:
        """A deterministic loss curve (seed + training file) with a mild late overfit on validation."""
        hyper = state.obj["method"][state.obj["method"]["type"]]["hyperparameters"]
        n_epochs, batch_size = int(hyper["n_epochs"]), int(hyper["batch_size"])
        steps_per_epoch = max(1, math.ceil(state.n_examples / batch_size))
        total = steps_per_epoch * n_epochs
        has_valid = state.obj["validation_file"] is not None
        rng = _seeded_rng(state.obj["seed"], state.obj["training_file"], state.n_examples)
        overfit = rng.uniform(0.05, 0.6)
        valid_every = max(1, total // 10)
        plan = []
        for step in range(1, total + 1):
            progress = step / total
            train_loss = 0.25 + 1.6 * math.exp(-4.0 * progress) + rng.uniform(-0.04, 0.04)
            row: dict[str, Any] = {
                "step": step,
                "total_steps": total,
                "train_loss": round(train_loss, 5),
                "train_mean_token_accuracy": round(min(0.99, max(0.0, 1.0 - train_loss / 2.2)), 5),
            }
            if has_valid and (step % valid_every == 0 or step % steps_per_epoch == 0 or step == total):
                valid_loss = 0.35 + 1.5 * math.exp(-3.5 * progress) + overfit * progress**3 + rng.uniform(-0.03, 0.03)
                row["valid_loss"] = round(valid_loss, 5)
                row["valid_mean_token_accuracy"] = round(min(0.99, max(0.0, 1.0 - valid_loss / 2.2)), 5)
            if has_valid and (step % steps_per_epoch == 0 or step == total):
                full = 0.35 + 1.5 * math.exp(-3.5 * progress) + overfit * progress**3 + rng.uniform(-0.01, 0.01)
                row["full_valid_loss"] = round(full, 5)
                row["full_valid_mean_token_accuracy"] = round(min(0.99, max(0.0, 1.0 - full / 2.2)), 5)
            plan.append(row)
        state.plan = plan
        state.steps_per_epoch = steps_per_epoch

    def _reveal_steps(self, state: _JobState, upto: int) -> None:
        for row in state.plan[state.revealed_steps : upto]:
            step, total = row["step"], row["total_steps"]
            message = f"Step {step}/{total}: training loss={row['train_loss']:.2f}"
            if "valid_loss" in row:
                message += f", validation loss={row['valid_loss']:.2f}"
            if "full_valid_loss" in row:
                message += f", full validation loss={row['full_valid_loss']:.2f}"
            # Validation metrics only on the steps that computed them (absent otherwise, as in real events).
            keys = ("step", "train_loss", "valid_loss", "total_steps", "full_valid_loss", "train_mean_token_accuracy",
                    "valid_mean_token_accuracy", "full_valid_mean_token_accuracy")  # fmt: skip
            self._event(state, message, data={key: row[key] for key in keys if key in row})
            if step % state.steps_per_epoch == 0 or step == total:
                self._checkpoint(state, row)
        state.revealed_steps = max(state.revealed_steps, min(upto, len(state.plan)))

    def _checkpoint(self, state: _JobState, row: dict[str, Any]) -> None:
        step = row["step"]
        # The model name is derived from the job id, so checkpoint names match the final model's.
        state.checkpoints.append(
            {
                "id": _random_id("ftckpt_"),
                "object": "fine_tuning.job.checkpoint",
                "created_at": self._now(),
                "fine_tuned_model_checkpoint": f"{self._model_name(state)}:ckpt-step-{step}",
                "fine_tuning_job_id": state.obj["id"],
                "step_number": step,
                "metrics": {
                    "full_valid_loss": row.get("full_valid_loss"),
                    "full_valid_mean_token_accuracy": row.get("full_valid_mean_token_accuracy"),
                    "step": float(step),
                    "train_loss": row["train_loss"],
                    "train_mean_token_accuracy": row["train_mean_token_accuracy"],
                    "valid_loss": row.get("valid_loss"),
                    "valid_mean_token_accuracy": row.get("valid_mean_token_accuracy"),
                },
            }
        )
        self._event(state, f"Checkpoint created at step {step}")
        del state.checkpoints[:-3]  # only the last 3 epochs' checkpoints are kept

    def _model_name(self, state: _JobState) -> str:
        obj = state.obj
        short = _seeded_rng(obj["id"]).choices(_ALNUM, k=8)
        return f"ft:{obj['model']}:{self.organization}:{obj['user_provided_suffix'] or ''}:{''.join(short)}"

    def _finish_succeeded(self, state: _JobState) -> None:
        obj = state.obj
        hyper = obj["method"][obj["method"]["type"]]["hyperparameters"]
        lines = [RESULTS_CSV_HEADER]
        for row in state.plan:
            valid = row.get("valid_loss")
            valid_acc = row.get("valid_mean_token_accuracy")
            lines.append(
                f"{row['step']},{row['train_loss']},{row['train_mean_token_accuracy']},"
                f"{'' if valid is None else valid},{'' if valid_acc is None else valid_acc}"
            )
        csv_bytes = ("\n".join(lines) + "\n").encode()
        content = base64.b64encode(csv_bytes) if self.results_base64 else csv_bytes
        results = self._store_file("step_metrics.csv", "fine-tune-results", content)
        model_name = self._model_name(state)
        obj.update(
            status="succeeded",
            fine_tuned_model=model_name,
            finished_at=self._now(),
            estimated_finish=None,
            result_files=[results.obj["id"]],
            trained_tokens=state.example_tokens * int(hyper["n_epochs"]),
        )
        self._event(state, "New fine-tuned model created")
        self._event(state, "Evaluating model against our usage policies")
        self._event(state, "Usage policy evaluations completed, model is now enabled for sampling")
        self._event(state, "The job has successfully completed")

    # ----------------------------------------------------------------------------------------- chat
    def _chat(self, params: dict[str, Any]) -> _Response:
        model = params.get("model")
        messages = params.get("messages")
        if not isinstance(model, str) or not model:
            raise ApiError(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "Invalid 'messages': expected a non-empty array of message objects.", param="messages")
        for index, message in enumerate(messages):
            if message.get("role") not in CHAT_ROLES:
                raise ApiError(
                    400,
                    f"Invalid value for 'messages[{index}].role': {message.get('role')!r}.",
                    param=f"messages[{index}].role",
                )
        if params.get("stream"):
            raise ApiError(400, "This test server does not implement streaming ('stream': true).", param="stream")
        n = params.get("n", 1) or 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
            raise ApiError(400, f"Invalid 'n': expected an integer in [1, 128], got {n!r}.", param="n")
        max_tokens = params.get("max_completion_tokens", params.get("max_tokens"))
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ApiError(
                400, f"Invalid 'max_tokens': expected a positive integer, got {max_tokens!r}.", param="max_tokens"
            )
        pairs = self._chat_model_pairs(model)

        with self._lock:
            self._chat_in_flight += 1
            self._max_concurrent_chat = max(self._max_concurrent_chat, self._chat_in_flight)
        try:
            if self.chat_latency_s > 0:
                time.sleep(self.chat_latency_s)
            choices = []
            completion_tokens = 0
            for index in range(n):
                rng = _seeded_rng(model, messages, params.get("seed"), index)
                if self.chat_responder is not None:
                    content = self.chat_responder(model, messages)
                elif pairs is not None:
                    content = _fine_tuned_answer(pairs, messages, rng)
                else:
                    content = _base_answer(messages, rng)
                finish_reason = "stop"
                if max_tokens is not None and count_tokens(content) > max_tokens:
                    content = " ".join(content.split()[:max_tokens])
                    finish_reason = "length"
                completion_tokens += count_tokens(content)
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                )
        finally:
            with self._lock:
                self._chat_in_flight -= 1
                self._chat_calls += 1
        prompt_tokens = count_message_tokens(messages)
        return _json_response(
            {
                "id": _random_id("chatcmpl-", 29),
                "object": "chat.completion",
                "created": self._now(),
                "model": model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {
                        "reasoning_tokens": 0,
                        "audio_tokens": 0,
                        "accepted_prediction_tokens": 0,
                        "rejected_prediction_tokens": 0,
                    },
                },
                "service_tier": "default",
                "system_fingerprint": "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10],
            },
            headers={
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": str(200000 - prompt_tokens),
                "x-ratelimit-reset-tokens": "6ms",
            },
        )

    def _chat_model_pairs(self, model: str) -> list[tuple[set[str], str]] | None:
        """The fine-tuned job's (prompt, completion) pairs for an ``ft:`` model; None for a base model."""
        if model.startswith("ft:"):
            with self._lock:
                for state in self._jobs.values():
                    name = state.obj["fine_tuned_model"]
                    checkpoints = {c["fine_tuned_model_checkpoint"] for c in state.checkpoints}
                    if name is not None and (model == name or model in checkpoints):
                        return state.pairs
        elif CHAT_MODEL_PATTERN.match(model):
            return None
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


# --------------------------------------------------------------------------------------------- helpers
def _json_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
            "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
        ) from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return parsed


def _int_param(params: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid '{name}': expected an integer, got {raw!r}.", param=name) from None
    if value < 1:
        raise ApiError(400, f"Invalid '{name}': expected at least 1, got {value}.", param=name)
    return min(value, maximum)


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ApiError(400, "Invalid 'metadata': expected an object of string keys and values.", param="metadata")
    if len(metadata) > 16:
        raise ApiError(400, f"Invalid 'metadata': at most 16 keys, got {len(metadata)}.", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise ApiError(400, f"Invalid 'metadata': key {key!r} is longer than 64 characters.", param="metadata")
        if not isinstance(value, str) or len(value) > 512:
            raise ApiError(
                400,
                f"Invalid 'metadata': value of {key!r} must be a string of at most 512 characters.",
                param="metadata",
            )
    return dict(metadata)


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data -> {field name: (filename or None, bytes)} with the stdlib's MIME parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        raise ApiError(400, "Could not parse the multipart/form-data body.")
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _example_messages(example: dict[str, Any]) -> list[dict[str, Any]]:
    if "messages" in example:
        return list(example["messages"])
    # DPO: the input conversation plus the preferred answer.
    return list(example["input"]["messages"]) + list(example["preferred_output"])


def _parse_training_jsonl(content: bytes, method_type: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(problem or None, examples): the training-file format rules for chat SFT and DPO lines."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return "The file is not valid UTF-8.", []
    examples: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as err:
            return f"Line {number}: not valid JSON ({err.msg}).", []
        if not isinstance(example, dict):
            return f"Line {number}: expected a JSON object.", []
        if method_type == "dpo":
            problem = _dpo_problem(example)
        else:
            problem = _messages_problem(example.get("messages"), require_assistant=True)
        if problem is not None:
            return f"Line {number}, {problem}", []
        examples.append(example)
    return None, examples


def _messages_problem(messages: Any, *, require_assistant: bool) -> str | None:
    if not isinstance(messages, list) or not messages:
        return 'key "messages": expected a non-empty list of messages.'
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            return f"message {index}: expected an object."
        extra = sorted(set(message) - MESSAGE_KEYS)
        if extra:
            return f"message {index}: Unrecognized key(s) in object: {', '.join(repr(k) for k in extra)}"
        role = message.get("role")
        if role not in CHAT_ROLES:
            return f"message {index}: invalid role {role!r}."
        content = message.get("content")
        if content is None and not (
            role == "assistant" and (message.get("tool_calls") or message.get("function_call"))
        ):
            return f"message {index}: missing content."
        if content is not None and not isinstance(content, str | list):
            return f"message {index}: content must be a string or a list of content parts."
        if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
            return f"message {index}: 'weight' must be 0 or 1 and is only allowed on assistant messages."
    if require_assistant and not any(m.get("role") == "assistant" for m in messages):
        return "At least one message must be from the assistant."
    return None


def _dpo_problem(example: dict[str, Any]) -> str | None:
    source = example.get("input")
    if not isinstance(source, dict):
        return 'key "input": expected an object with "messages".'
    problem = _messages_problem(source.get("messages"), require_assistant=False)
    if problem is not None:
        return f'key "input", {problem}'
    for key in ("preferred_output", "non_preferred_output"):
        output = example.get(key)
        if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
            return f'key "{key}": expected a list with exactly one assistant message.'
        if output[0].get("role") != "assistant" or not isinstance(output[0].get("content"), str):
            return f'key "{key}": expected one assistant message with string content.'
    return None


def _prompt_completion(messages: list[dict[str, Any]]) -> tuple[set[str], str] | None:
    """(words of the user turns before the last trained assistant message, that message's text)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "assistant" and message.get("weight", 1) == 1 and _message_text(message):
            prompt = " ".join(_message_text(m) for m in messages[:index] if m.get("role") == "user")
            return set(_WORD.findall(prompt.lower())), _message_text(message)
    return None


def _fine_tuned_answer(pairs: list[tuple[set[str], str]], messages: list[dict[str, Any]], rng: random.Random) -> str:
    """Write like the training data: the completion of one of the closest training prompts (seeded tie-break)."""
    if not pairs:
        return ""
    query = set(_WORD.findall(" ".join(_message_text(m) for m in messages if m.get("role") == "user").lower()))
    scored = sorted(
        ((len(query & words) / (len(query | words) or 1), position) for position, (words, _) in enumerate(pairs)),
        reverse=True,
    )
    best = [position for score, position in scored if score == scored[0][0]]
    return pairs[rng.choice(best)][1]


_BASE_OPENERS = ("Sure.", "Here is a short answer.", "Good question.", "In brief:")
_BASE_BODIES = (
    "It depends on the context, but the key points are {topic}.",
    "A concise take: focus on {topic} and keep it simple.",
    "Consider {topic}; that usually covers the essentials.",
)


def _base_answer(messages: list[dict[str, Any]], rng: random.Random) -> str:
    """Generic, short, assistant-like text that mentions a few words of the last user message."""
    last_user = next((_message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    words = [w for w in re.findall(r"[A-Za-z]{4,}", last_user)][:3] or ["the question"]
    return f"{rng.choice(_BASE_OPENERS)} {rng.choice(_BASE_BODIES).format(topic=', '.join(words))}"


def _make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
        # One buffered write per response, flushed by the stdlib after each request, and no Nagle delay: headers
        # and body sent separately would cost a delayed-ACK round trip (~40 ms) per request.
        wbufsize = -1
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            body = self._read_body()
            headers = {key.lower(): value for key, value in self.headers.items()}
            response = fake.handle(self.command, self.path, headers, body)
            if response.drop:  # the server acted, then the connection went: no status line, no body
                self.close_connection = True
                return
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(response.body)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request log is kept in FakeOpenAI.requests

    return Handler


@contextlib.contextmanager
def running_fake_openai() -> Iterator[FakeOpenAI]:
    """Start a server for the duration of a ``with`` block (used by the pytest fixture and bench scripts)."""
    fake = FakeOpenAI().start()
    try:
        yield fake
    finally:
        fake.stop()
