"""`promptops init`: a new project a user can commit at once.

It writes an example prompt with a variant and an experiment, an eval of it with a small dataset,
`promptops.yaml` naming a local OpenAI-compatible provider, a `.gitignore` that keeps the local
database and virtualenv out of git, and a README of what to do next. Existing files are never
overwritten (a `.gitignore` only gains the lines it lacks).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from promptops import promptfiles
from promptops.errors import InvalidInput

EVAL_NAME = "summarize-smoke"

EVAL = f"""\
# An offline check of the example prompt: `promptops eval` renders every case with each version
# (production and the experiment's arms), calls the model and applies the assertions.
name: {EVAL_NAME}
prompt: summarize
dataset: {EVAL_NAME}.jsonl           # one case per line, next to this file
assert:                              # applied to every case
  - {{type: icontains, value: "{{{{ expected }}}}"}}   # the summary keeps the key fact
  - {{type: latency, max_ms: 30000}}
gate: {{min_pass_rate: 0.66}}          # a version needs two of the three cases to pass
"""

_CASES = [
    {
        "id": "refund-window",
        "vars": {
            "document": "Customers may return any item within 30 days of delivery for a full "
            "refund. Items must be unused and in their original packaging. Refunds "
            "are paid to the original payment method within five business days.",
            "audience": "customer",
        },
        "expected": "30 days",
    },
    {
        "id": "outage-cause",
        "vars": {
            "document": "On 3 March the checkout service was unavailable for 42 minutes. The "
            "cause was an expired TLS certificate on the payments gateway. The "
            "certificate was renewed and an expiry alert was added.",
            "audience": "engineer",
            "max_points": 2,
        },
        "expected": "certificate",
    },
    {
        "id": "quarter-revenue",
        "vars": {
            "document": "Revenue for the quarter grew 12% to 4.1 million euros, driven by "
            "subscriptions. Hardware sales fell 8%. Hiring is paused until the next "
            "quarter.",
            "audience": "executive",
        },
        "expected": "12%",
    },
]
DATASET = "".join(json.dumps(case, ensure_ascii=False) + "\n" for case in _CASES)

CONFIG = """\
# The LLM providers that `promptops eval` and the gateway call. Any OpenAI-compatible server works
# (llama.cpp's llama-server, vLLM, Ollama at http://127.0.0.1:11434/v1, ...). An API key is never
# written here: name the environment variable that holds it with api_key_env.
default_provider: local
providers:
  # A model server on this machine; the prompt's `model.name` is sent as the model to use.
  local: {base_url: "http://127.0.0.1:8080/v1", timeout_seconds: 60}
  # openai: {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY}
"""

README = f"""\
# A promptops project

- `prompts/summarize.yaml`: a prompt with a variant (`paragraph`) and an experiment between them.
- `evals/{EVAL_NAME}.yaml` and `.jsonl`: an offline check of that prompt on three cases.
- `promptops.yaml`: the model provider (a local OpenAI-compatible server on port 8080).

Next steps:

1. `promptops validate` checks the prompt files (`PATH:LINE: message` for each problem).
2. `promptops serve` creates `promptops.db`, registers the prompts and starts the API and the
   dashboard on http://127.0.0.1:8000 (the experiment starts running).
3. In your application, serve the prompt and report the outcome:

   ```python
   from promptops import Client

   with Client("http://127.0.0.1:8000") as client:
       served = client.serve("summarize", {{"document": text}})
       ...  # call your model with served.messages
       client.feedback(served.decision_id, 1)  # the summary was helpful
   ```

4. With a model server running, `promptops eval` runs `evals/` over the versions.
5. When the experiment promotes a winner, `promptops adopt summarize` rewrites the prompt file so
   that its main content is the winner; commit that change.

Commit everything here; `.gitignore` keeps the local database out of git.
"""

GITIGNORE_ENTRIES = ("promptops.db", "promptops.db-wal", "promptops.db-shm", "promptops.db-journal", ".venv/")


@dataclass
class InitReport:
    """The files `init` created or updated, relative to the project folder."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def _read_gitignore(path: Path) -> str:
    """The text of an existing `.gitignore` ("" when there is none), read before anything is written."""
    try:
        return path.read_text(encoding="utf-8") if path.exists() else ""
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text; nothing changed") from None


def _gitignore(path: Path, existing: str, report: InitReport) -> None:
    """Keep the database and the virtualenv out of git; an existing file only gains lines."""
    present = {line.strip() for line in existing.splitlines()}
    missing = [e for e in GITIGNORE_ENTRIES if e not in present]
    if not missing:
        return
    block = "# promptops: the local database and the virtualenv\n" + "".join(f"{e}\n" for e in missing)
    if existing and not existing.endswith("\n"):
        existing += "\n"
    path.write_text(existing + ("\n" if existing else "") + block, encoding="utf-8")
    (report.updated if existing else report.created).append(path.name)


def init_project(directory: Path) -> InitReport:
    """Write the example project into `directory`; refuses when its prompt file exists already."""
    prompt = directory / "prompts" / "summarize.yaml"
    if prompt.exists():
        raise InvalidInput(f"{prompt} already exists; nothing changed")
    for folder in (directory / "prompts", directory / "evals"):
        nearest = next(p for p in (folder, *folder.parents) if p.exists())
        if not nearest.is_dir():
            raise InvalidInput(f"{nearest} is not a folder; nothing changed")
    gitignore = _read_gitignore(directory / ".gitignore")
    files = {
        prompt: promptfiles.example_prompt_text(),
        directory / "evals" / f"{EVAL_NAME}.yaml": EVAL,
        directory / "evals" / f"{EVAL_NAME}.jsonl": DATASET,
        directory / "promptops.yaml": CONFIG,
        directory / "README.md": README,
    }
    report = InitReport()
    made: list[Path] = []  # files and folders this call created, undone if a later write fails
    try:
        for path, text in files.items():
            if path.exists():
                continue
            for folder in reversed((path.parent, *path.parent.parents)):
                if not folder.exists():
                    folder.mkdir()
                    made.append(folder)
            path.write_text(text, encoding="utf-8")
            made.append(path)
            report.created.append(path.relative_to(directory).as_posix())
        _gitignore(directory / ".gitignore", gitignore, report)
    except OSError as exc:
        for done in reversed(made):
            with contextlib.suppress(OSError):
                done.rmdir() if done.is_dir() else done.unlink()
        where = exc.filename or directory
        raise InvalidInput(
            f"cannot write {where}: {(exc.strerror or str(exc)).lower()}; nothing changed"
        ) from None
    return report
