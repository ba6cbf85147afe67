"""`--weights hf`: a preset's checkpoint from the local Hugging Face cache, offline first.

The cache (`HF_HUB_CACHE`, `HF_HOME`, default `~/.cache/huggingface/hub`) is searched first,
for each of the preset's repositories and file names in turn; only when nothing is cached and
`HF_HUB_OFFLINE` is not set is the Hub asked (a gated model then needs an accepted licence and
a token). The weights id is `hf:<repo>@<commit>/<file>`: the snapshot's revision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from balnmp_cache.errors import EncoderError

__all__ = ["HubWeights", "cache_dir", "find_hf_weights", "hub_offline"]


@dataclass(frozen=True)
class HubWeights:
    """Where a preset's weights live on the Hugging Face Hub."""

    repos: tuple[str, ...]  # current repository first, then earlier names of it
    files: tuple[str, ...]  # candidate checkpoint files in the repository, preferred first
    repo_type: str = "model"
    gated: bool | None = False  # None: not known
    licence_step: str = ""  # what a user must do before the Hub serves the files

    @property
    def access(self) -> str:
        return {True: "gated", False: "public", None: "access UNKNOWN"}[self.gated]

    @property
    def repo(self) -> str:
        return self.repos[0]

    def describe(self) -> str:
        """e.g. "MahmoodLab/UNI: pytorch_model.bin (gated)"."""
        kind = "dataset " if self.repo_type != "model" else ""
        older = f"; formerly {', '.join(self.repos[1:])}" if len(self.repos) > 1 else ""
        return f"{kind}{self.repo}: {' or '.join(self.files)}{older}"

    def fetch_command(self) -> str:
        """The command that pre-fetches the weights into the cache on a machine online."""
        kind = "" if self.repo_type == "model" else f" --repo-type {self.repo_type}"
        return f"hf download {self.repo} {self.files[0]}{kind}"


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` set to a true value (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str | None:
    """The hub cache the environment names now (`HF_HUB_CACHE`, else `HF_HOME/hub`; None:
    huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME")
    return os.path.join(home, "hub") if home else None


def find_hf_weights(encoder: str, hub: HubWeights) -> tuple[Path, str]:
    """The local checkpoint file of `encoder` and its weights id (downloading it only when
    nothing is cached and the Hub may be reached)."""
    import huggingface_hub as hf
    from huggingface_hub import errors

    cache = cache_dir()
    for repo in hub.repos:
        for name in hub.files:
            found = hf.try_to_load_from_cache(repo, name, cache_dir=cache,
                                              repo_type=hub.repo_type)  # fmt: skip
            if isinstance(found, str):
                return Path(found), _weights_id(repo, name, Path(found))
    if hub_offline():
        raise EncoderError(_missing(encoder, hub, "HF_HUB_OFFLINE is set, so the Hub was not "
                                                  "asked"))
    last: Exception | None = None
    for name in hub.files:
        try:
            path = Path(hf.hf_hub_download(hub.repo, name, repo_type=hub.repo_type,
                                           cache_dir=cache))  # fmt: skip
            return path, _weights_id(hub.repo, name, path)
        except (errors.GatedRepoError, errors.RepositoryNotFoundError) as exc:
            raise EncoderError(_missing(encoder, hub, f"the Hub refused access: {exc}")) from exc
        except errors.LocalEntryNotFoundError as exc:  # not cached and the Hub unreachable
            raise EncoderError(_missing(encoder, hub, f"the Hub cannot be reached: {exc}")
                               ) from exc
        except errors.EntryNotFoundError as exc:  # the repository has no such file
            last = exc
        except (OSError, errors.HfHubHTTPError) as exc:  # proxy, server error, ...
            raise EncoderError(_missing(encoder, hub, f"the Hub cannot be reached: {exc}")
                               ) from exc
    raise EncoderError(_missing(encoder, hub, f"the repository has none of "
                                              f"{', '.join(hub.files)} ({last})"))


def _weights_id(repo: str, name: str, path: Path) -> str:
    """`hf:<repo>@<commit>/<file>`; cached files live in `.../snapshots/<commit>/<file>`."""
    snapshot = path.parents[len(name.split("/")) - 1]
    commit = snapshot.name if snapshot.parent.name == "snapshots" else "unknown"
    return f"hf:{repo}@{commit}/{name}"


def _missing(encoder: str, hub: HubWeights, why: str) -> str:
    where = cache_dir() or "~/.cache/huggingface/hub"
    step = f" {hub.licence_step}" if hub.licence_step else ""
    login = " and log in (hf auth login)" if hub.gated is not False else ""
    return (
        f"weights of encoder {encoder!r} are not in the local Hugging Face cache ({where}) "
        f"and were not downloaded: {why}. They come from https://huggingface.co/"
        f"{'datasets/' if hub.repo_type == 'dataset' else ''}{hub.repo} ({hub.access}).{step} On a machine with internet (e.g. a login "
        f"node){login}, run `{hub.fetch_command()}` with the same HF_HOME/HF_HUB_CACHE as the "
        "job, or pass --weights PATH to a local copy of the checkpoint."
    )

