"""What is specific to the BALNMP paper (Xu et al., Front. Oncol. 2021) and its code
(github.com/bupt-ai-cz/BALNMP): released checkpoints as runs (`head`, `importer`).

`import_checkpoint` writes a run directory of a released model (`balnmp-mil paper import`).

`head_from_checkpoint` reads a released model's MIL head into our `balnmp` model.
"""

from __future__ import annotations

from balnmp_mil.paper.head import head_from_checkpoint
from balnmp_mil.paper.importer import ImportResult, import_checkpoint

__all__ = ["ImportResult", "head_from_checkpoint", "import_checkpoint"]
