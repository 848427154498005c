"""Versioned prompt templates (data_gen/prompts/<name>.txt) for captioning, QA and filtering.

A template file has a `### system` and a `### user` section; `{placeholders}` are filled with
str.format. The name carries the version (`qa.v1`); a new wording gets a new file, never an edit
in place. Cache keys hold the name *and* the file's digest, so even an edit in place cannot
reuse answers to the old wording.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROMPT_DIR = Path(__file__).parent / "prompts"


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str
    digest: str  # sha256 of the file, first 16 hex digits

    @property
    def version(self) -> str:
        return f"{self.name}@{self.digest}"

    def messages(self, **values) -> list[dict]:
        """[system, user] chat messages with the placeholders filled (user content as text)."""
        try:
            return [{"role": "system", "content": self.system.format(**values)},
                    {"role": "user", "content": self.user.format(**values)}]
        except (KeyError, IndexError) as exc:
            raise PromptError(f"prompt {self.name}: missing value for placeholder {exc}") from exc


@lru_cache(maxsize=32)
def load_prompt(name: str, directory: str | None = None) -> PromptTemplate:
    path = Path(directory or PROMPT_DIR) / f"{name}.txt"
    if not path.is_file():
        raise PromptError(f"prompt template {path} does not exist")
    text = path.read_text()
    parts: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.strip().lower() in ("### system", "### user"):
            current = line.strip()[4:].lower()
            parts[current] = []
        elif current is not None:
            parts[current].append(line)
    if set(parts) != {"system", "user"}:
        raise PromptError(f"{path}: needs a '### system' and a '### user' section")
    return PromptTemplate(name, "\n".join(parts["system"]).strip(), "\n".join(parts["user"]).strip(),
                          hashlib.sha256(text.encode()).hexdigest()[:16])
