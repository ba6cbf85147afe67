"""Old import paths keep working: the flat modules of balnmp 0.1 alias their new homes.

`import balnmp_mil.metrics` (say) returns the very module `balnmp_mil.evaluation.metrics`,
with a `DeprecationWarning` naming the new path, so code and monkeypatches written against the
flat layout see the same objects. Installed by both packages' `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old module -> its new home (a subpackage face where one exports the old module's names)
ALIASES = {
    "balnmp_cache.slide": "balnmp_cache.slides",
    "balnmp_cache.slide_cucim": "balnmp_cache.slides.cucim",
    "balnmp_cache.slide_image": "balnmp_cache.slides.image",
    "balnmp_cache.slide_openslide": "balnmp_cache.slides.openslide",
    "balnmp_cache.slide_patches": "balnmp_cache.slides.patches",
    "balnmp_cache.tiffprobe": "balnmp_cache.slides.tiffprobe",
    "balnmp_cache.mpp": "balnmp_cache.slides.mpp",
    "balnmp_cache.tissue": "balnmp_cache.tiling.tissue",
    "balnmp_cache.annotations": "balnmp_cache.tiling.annotations",
    "balnmp_cache.polygons": "balnmp_cache.tiling.polygons",
    "balnmp_cache.qc": "balnmp_cache.tiling.qc",
    "balnmp_cache.store_load": "balnmp_cache.store.load",
    "balnmp_cache.store_h5": "balnmp_cache.store.h5",
    "balnmp_cache.store_zarr": "balnmp_cache.store.zarr",
    "balnmp_cache.store_foreign": "balnmp_cache.store.foreign",
    "balnmp_cache.pack": "balnmp_cache.store.pack",
    "balnmp_cache.extract_slide": "balnmp_cache.extract.slide_job",
    "balnmp_cache.extract_workers": "balnmp_cache.extract.workers",
    "balnmp_cache.pipeline": "balnmp_cache.extract.pipeline",
    "balnmp_cache.manifest": "balnmp_cache.extract.manifest",
    "balnmp_cache.locks": "balnmp_cache.extract.locks",
    "balnmp_cache.sharding": "balnmp_cache.extract.sharding",
    "balnmp_cache.synthetic_clinical": "balnmp_cache.synthetic.clinical",
    "balnmp_cache.synthetic_geometry": "balnmp_cache.synthetic.geometry",
    "balnmp_cache.synthetic_noise": "balnmp_cache.synthetic.noise",
    "balnmp_cache.synthetic_render": "balnmp_cache.synthetic.render",
    "balnmp_cache.synthetic_tiff": "balnmp_cache.synthetic.tiff",
    "balnmp_mil.models_pool": "balnmp_mil.models.pool",
    "balnmp_mil.models_attention": "balnmp_mil.models.attention",
    "balnmp_mil.models_clam": "balnmp_mil.models.clam",
    "balnmp_mil.models_dsmil": "balnmp_mil.models.dsmil",
    "balnmp_mil.models_transformer": "balnmp_mil.models.transmil",
    "balnmp_mil.cohort": "balnmp_mil.data.cohort",
    "balnmp_mil.cohort_load": "balnmp_mil.data.load",
    "balnmp_mil.labels": "balnmp_mil.data.labels",
    "balnmp_mil.clinical": "balnmp_mil.data.clinical",
    "balnmp_mil.splits": "balnmp_mil.data.splits",
    "balnmp_mil.train": "balnmp_mil.training.fit",
    "balnmp_mil.sweep": "balnmp_mil.training.sweep",
    "balnmp_mil.sweep_optim": "balnmp_mil.training.stacked_optim",
    "balnmp_mil.sklearn": "balnmp_mil.training.estimator",
    "balnmp_mil.baseline": "balnmp_mil.training.baseline",
    "balnmp_mil.metrics": "balnmp_mil.evaluation.metrics",
    "balnmp_mil.bootstrap": "balnmp_mil.evaluation.bootstrap",
    "balnmp_mil.delong": "balnmp_mil.evaluation.delong",
    "balnmp_mil.report": "balnmp_mil.evaluation.report",
    "balnmp_mil.plots": "balnmp_mil.evaluation.plots",
    "balnmp_mil.workflow_cv": "balnmp_mil.workflow.cv",
    "balnmp_mil.workflow_apply": "balnmp_mil.workflow.apply",
    "balnmp_mil.workflow_heatmap": "balnmp_mil.workflow.heatmap",
    "balnmp_mil.rundir": "balnmp_mil.workflow.rundir",
    "balnmp_mil.cli_common": "balnmp_mil.cli.common",
    "balnmp_mil.cli_train": "balnmp_mil.cli.train",
    "balnmp_mil.cli_eval": "balnmp_mil.cli.apply",
    "balnmp_mil.cli_store": "balnmp_mil.cli.store",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system overwrites it with the alias's
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed: only give it back its own spec."""
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        new = ALIASES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Add the alias finder once (after the normal finders: real modules always win)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
