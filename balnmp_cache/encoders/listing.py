"""The encoder table: `extract-features --list-encoders` (text) and docs/extraction.md
(Markdown, checked against this by the tests), both from the registered cards."""

from __future__ import annotations

from balnmp_cache.encoders.base import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    UNAVAILABLE,
    EncoderCard,
)

__all__ = ["COLUMNS", "encoder_rows", "format_encoder_table"]

COLUMNS = ("name", "dim", "input", "µm/px", "pooling", "precision", "licence · access")
_MARKDOWN_EXTRA = ("default weights", "reference", "not published / assumed here")


def _triple(values: tuple[float, ...], short: bool) -> str:
    return "(" + ", ".join(f"{v:.3g}" if short else f"{v:g}" for v in values) + ")"


def _dim(card: EncoderCard) -> str:
    flat = f" ({card.flat_dim:,} flattened)" if card.flat_dim else ""
    return f"{card.feature_dim:,}{flat}"


def encoder_rows(markdown: bool = False) -> list[tuple[str, ...]]:
    """One row per registered encoder with a card (COLUMNS; with `markdown`, also where its
    weights come from, its reference and what its sources leave open), in name order."""
    rows: list[tuple[str, ...]] = []
    for name in sorted(ENCODERS.names()):
        card = ENCODERS.get(name).card
        if card is None:  # a plugin registered without a card
            width = len(COLUMNS) + (len(_MARKDOWN_EXTRA) if markdown else 0)
            rows.append((name, "?", *["(no card)"] + [""] * (width - 3)))
            continue
        p = card.preprocess
        norm = "ImageNet" if (p.mean, p.std) == (IMAGENET_MEAN, IMAGENET_STD) else (
            f"mean {_triple(p.mean, not markdown)}, std {_triple(p.std, not markdown)}")
        row: tuple[str, ...] = (name, _dim(card), f"{p.describe()}; {norm}",
               "any" if card.mpp is None else f"{card.mpp:g}", card.pooling,
               card.precision or "default", card.licence)  # fmt: skip
        if markdown:
            row += (card.hub or f"{card.weights} (torchvision)", card.reference, card.unknown)
        rows.append(row)
    return rows


def format_encoder_table(markdown: bool = False) -> str:
    """The table as aligned text, or as a Markdown table (`markdown`)."""
    head = COLUMNS + (_MARKDOWN_EXTRA if markdown else ())
    rows = encoder_rows(markdown)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        cells = [[f"`{r[0]}`", *r[1:]] for r in rows]
        cells += [[f"`{name}`", f"not available: {why}", *[""] * (len(head) - 2)]
                  for name, why in sorted(UNAVAILABLE.items())]  # fmt: skip
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in (head, *rows)]
    out += [f"{name}: not available: {why}" for name, why in sorted(UNAVAILABLE.items())]
    out.append("timm:<model>: any timm model (its pretrained config's size and statistics). "
               "Precision 'default': bf16 on CUDA, fp32 on CPU.")
    return "\n".join(out)
