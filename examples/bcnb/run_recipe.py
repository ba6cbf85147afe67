"""Reproduce the BALNMP experiments on a BCNB download: check, extract, train, Table 2.

    python examples/bcnb/run_recipe.py /data/BCNB out/bcnb --device cuda

runs, in order, exactly the commands of examples/bcnb/README.md (each is printed before it runs,
so they can be copied into a batch script):

1. `check_data.py BCNB` — layout and counts (exit 2 with what is missing);
2. `extract-features` with VGG16_BN at the paper's settings (256 px patches), from the
   pre-cut `paper_patches` (`--source patches`, default; `--backend patches --level 0`) or
   from the whole-slide JPEGs inside their JSON tumour polygons (`--source wsi`);
3. for each experiment (n0_vs_n+, n12_vs_n3, three_class, n0_vs_n12, n0_vs_n3):
   `balnmp-mil train` of the clinical-only logistic regression, DL-CNB (model `balnmp`, bags
   of 10 patches) and DL-CNB+C (the same with the paper's five clinical features), all three
   on the same patient split (`--splits` of the first run);
4. `table2.py` — the Table-2-style table, printed and written to OUT/table2.md;
5. with `--heatmaps`: `balnmp-mil heatmap` of each experiment's image model on its test
   patients' whole-slide JPEGs (`WSIs/<id>.jpg`; patches from `paper_patches` are placed by
   their region in `WSIs/<id>.json`), PNG + QuPath GeoJSON + index in OUT/heatmaps/<task>/.

`--protocol paper` trains the image models with the official code's schedule; `--official-splits
DIR` (the repository's `code/dataset/json`) first runs `balnmp-mil paper splits DIR --out
OUT/paper-splits` and gives every run its experiment's published patient split (`--splits`);
with features from `paper_patches` (`--source patches`), the image models also train and
evaluate on the paper's fixed bags of 10 (`--bags OUT/paper-splits/<task>.bags.json`, instead
of `--instances-per-bag`).
When the official `code/dataset/clinical_data/preprocessed-type-K.xlsx` lies beside that
folder (a checkout of the repository), the clinical models take its values as they are
(`--clinical-variant official`) instead of encoding the BCNB table's (`paper5`).

The commands run in this process (click's `main(args)`), so torch is imported once. Finished
steps are kept: rerunning skips extracted slides and existing run directories (`--overwrite`
retrains). `--weights none --epochs 1 --input-size 32` makes a seconds-long smoke run on the
generated stand-in (make_standin.py); the defaults are the real thing (ImageNet VGG16_BN).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_data  # noqa: E402  (this folder, put on sys.path above)
import table2  # noqa: E402

TASKS = tuple(task for task, _ in table2.EXPERIMENTS)


def _settings(clinical: str, instances: int, protocol: str | None = None,
              bags: Path | None = None, official_clinical: Path | None = None
              ) -> dict[str, list[str]]:
    """`balnmp-mil train` options of the paper's three models, by run-directory name; the
    image models train on the fixed `bags` when given, else on `instances` per bag; the
    clinical inputs are the official preprocessed values when `official_clinical` is given,
    else the paper's five variables encoded from the BCNB table."""
    clin = (["--clinical", str(official_clinical), "--clinical-variant", "official"]
            if official_clinical else ["--clinical", clinical, "--clinical-variant", "paper5"])
    image = ["--model", "balnmp",
             *(["--bags", str(bags)] if bags else ["--instances-per-bag", str(instances)])]
    image += ["--protocol", protocol] if protocol else []
    return {"clinical": ["--clinical-only", *clin], "image": image,
            "image+clinical": [*image, *clin]}


def fixed_bags(official: Path | None, task: str, source: str) -> Path | None:
    """The paper's fixed bags of `task` (`paper splits` wrote them into `official`), when the
    features come from paper_patches, whose file names the bags list; else None."""
    bags = None if official is None else official / f"{task}.bags.json"
    return bags if bags is not None and bags.is_file() and source == "patches" else None


def official_clinical(official_json: str | None, task: str) -> Path | None:
    """The official `code/dataset/clinical_data/preprocessed-type-K.xlsx` of `task`, beside the
    `--official-splits` folder (`code/dataset/json`), when it is there; else None."""
    from balnmp_mil.paper.splits import TYPE_TASKS

    if official_json is None:
        return None
    k = next(k for k, t in TYPE_TASKS.items() if t == task)
    path = Path(official_json).parent / "clinical_data" / f"preprocessed-type-{k}.xlsx"
    return path if path.is_file() else None


def run_command(name: str, main: Callable[..., object], argv: list[str]) -> int:
    """Print `name argv` as a shell line, run the click command in-process, return its status."""
    print("$ " + shlex.join([name, *argv]), flush=True)
    try:
        main.main(args=argv, prog_name=name, standalone_mode=True)  # type: ignore[attr-defined]
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def extract_argv(layout: check_data.BCNBLayout, args: argparse.Namespace) -> list[str]:
    """`extract-features` arguments for the chosen source of patches."""
    common = ["--level", "0", "--patch-size", "256", "--encoder", args.encoder,
              "--weights", args.weights, "--out", str(Path(args.out) / "features"),
              "--batch-size", str(args.batch_size), "--skip-errors"]
    if args.device:
        common += ["--device", args.device]
    if args.input_size:
        common += ["--input-size", str(args.input_size)]
    if args.source == "patches":
        if layout.patch_dir is None:
            raise check_data.BCNBLayoutError(f"{layout.root}: no paper_patches folder; use "
                                             "--source wsi or unpack paper_patches")
        return [str(layout.patch_dir), "--backend", "patches", *common]
    if layout.wsi_dir is None:
        raise check_data.BCNBLayoutError(f"{layout.root}: no WSIs folder; use --source patches")
    # BCNB JPEGs carry no µm/px: tile level 0 in 256 px patches inside the tumour polygons,
    # dropping patches with 30 % or more background as the paper did.
    return [str(layout.wsi_dir), "--backend", "image", "--annotations", str(layout.wsi_dir),
            "--min-tissue", "0.7", *common]


def train_argv(task: str, setting: str, options: list[str], args: argparse.Namespace,
               clinical: str, splits: Path | None) -> list[str]:
    """`balnmp-mil train` arguments of one experiment and model."""
    run = Path(args.out) / "runs" / task / setting
    argv = [str(Path(args.out) / "features"), "--labels", clinical, "--task", task, *options,
            "--seed", str(args.seed), "--val", str(args.val), "--test", str(args.test),
            "--n-bootstrap", str(args.n_bootstrap), "--out", str(run)]
    if setting != "clinical":
        argv += ["--epochs", str(args.epochs)] if args.epochs else []
        argv += ["--device", args.device] if args.device else []
    if splits is not None:
        argv += ["--splits", str(splits)]
    if args.on_missing != "error":
        argv += ["--on-missing", args.on_missing]
    if args.overwrite:
        argv.append("--overwrite")
    return argv


def run_recipe(args: argparse.Namespace) -> int:
    """Every step in order; returns the exit status (first failing step's, else 0)."""
    from balnmp_cache.cli import main as extract_main
    from balnmp_mil.cli.group import main as mil_main

    print(f"$ python examples/bcnb/check_data.py {shlex.quote(args.bcnb)}")
    try:
        layout = check_data.check_layout(args.bcnb, args.expect_patients)
    except check_data.BCNBLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(layout.summary())
    try:
        argv = extract_argv(layout, args)
    except check_data.BCNBLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = run_command("extract-features", extract_main, argv)
    if status not in (0, 1):  # 1: some slides failed (listed in manifest.csv); go on
        return status
    clinical = str(layout.clinical)
    official = None
    if args.official_splits:
        official = Path(args.out) / "paper-splits"
        status = run_command("balnmp-mil", mil_main, ["paper", "splits", args.official_splits,
                                                      "--out", str(official)])
        if status != 0:
            return status
    for task in args.experiments:
        splits: Path | None = None if official is None else official / f"{task}.json"
        bags = fixed_bags(official, task, args.source)
        for setting, options in _settings(clinical, args.instances_per_bag, args.protocol,
                                          bags, official_clinical(args.official_splits,
                                                                  task)).items():
            if setting not in args.settings:
                continue
            run = Path(args.out) / "runs" / task / setting
            if run.exists() and not args.overwrite:
                print(f"# {run} exists; kept (--overwrite retrains)")
            else:
                code = run_command("balnmp-mil", mil_main,
                                   ["train", *train_argv(task, setting, options, args, clinical,
                                                         splits)])
                if code != 0:
                    return code
            splits = splits or run / "splits.json"
    table_path = Path(args.out) / "table2.md"
    print(f"$ python examples/bcnb/table2.py {shlex.quote(str(Path(args.out) / 'runs'))} "
          f"--out {shlex.quote(str(table_path))}")
    status = table2.main([str(Path(args.out) / "runs"), "--out", str(table_path)])
    if status == 0 and args.heatmaps:
        status = draw_heatmaps(layout, args, mil_main)
    return status


def draw_heatmaps(layout: check_data.BCNBLayout, args: argparse.Namespace,
                  mil_main: Callable[..., object]) -> int:
    """`balnmp-mil heatmap RUN --slides WSIs --split test` of each experiment's image model
    (DL-CNB, else DL-CNB+C) into OUT/heatmaps/<task>/; the first failing status, else 0."""
    if layout.wsi_dir is None:
        print(f"error: {layout.root}: no WSIs folder to draw the heatmaps on", file=sys.stderr)
        return 2
    setting = next((s for s in ("image", "image+clinical") if s in args.settings), None)
    if setting is None:
        print("# --heatmaps: no image model among --settings; nothing to draw")
        return 0
    status = 0
    for task in args.experiments:
        run = Path(args.out) / "runs" / task / setting
        out = Path(args.out) / "heatmaps" / task
        code = run_command("balnmp-mil", mil_main, [
            "heatmap", str(run), "--slides", str(layout.wsi_dir), "--features",
            str(Path(args.out) / "features"), "--out", str(out), "--split", "test"])
        status = status or code
    return status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="BCNB: check, extract, train the five experiments, "
                                            "print a Table-2-style table.")
    p.add_argument("bcnb", help="the unpacked BCNB folder")
    p.add_argument("out", help="output folder (features/, runs/<task>/<setting>/, table2.md)")
    p.add_argument("--source", choices=("patches", "wsi"), default="patches",
                   help="paper_patches (default, the paper's pre-cut patches) or WSIs + JSON")
    p.add_argument("--encoder", default="vgg16_bn", help="encoder (the paper: vgg16_bn)")
    p.add_argument("--weights", default="imagenet", help="imagenet | none | PATH")
    p.add_argument("--input-size", type=int, default=None,
                   help="resize patches for the encoder (smoke tests only; default 256 as is)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu [cuda when present]")
    p.add_argument("--epochs", type=int, default=None, help="training epochs [FitConfig default]")
    p.add_argument("--instances-per-bag", type=int, default=10,
                   help="patches sampled per bag in training (the paper: 10)")
    p.add_argument("--val", type=float, default=0.2, help="validation fraction [0.2]")
    p.add_argument("--test", type=float, default=0.2, help="test fraction [0.2]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of AUC CI")
    p.add_argument("--experiments", default=",".join(TASKS),
                   help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--settings", default="clinical,image,image+clinical",
                   help="comma-separated subset of clinical,image,image+clinical")
    p.add_argument("--expect-patients", type=int, default=None,
                   help="fail unless the clinical table has this many patients (1058)")
    p.add_argument("--on-missing", choices=("error", "warn"), default="error",
                   help="patients whose slide failed extraction: stop (default) or leave out")
    p.add_argument("--protocol", choices=("paper",), default=None,
                   help="training protocol of the image models (paper: the official code's "
                        "SGD, warm restarts, 200 epochs, train-AUC stop) [balnmp's defaults]")
    p.add_argument("--official-splits", default=None, metavar="DIR",
                   help="the official code/dataset/json folder: train every run on the "
                        "paper's patient split of its experiment instead of drawing one "
                        "(and, from paper_patches, the image models on its fixed bags)")
    p.add_argument("--heatmaps", action="store_true",
                   help="draw each experiment's image model on its test patients' WSIs "
                        "(OUT/heatmaps/<task>/)")
    p.add_argument("--overwrite", action="store_true", help="retrain existing run directories")
    args = p.parse_args(argv)
    args.experiments = [t.strip() for t in args.experiments.split(",") if t.strip()]
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(args.experiments) - set(TASKS))
    unknown += sorted(set(args.settings) - {s for s, _ in table2.SETTINGS})
    if unknown:
        p.error(f"unknown experiment(s)/setting(s) {unknown}")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_recipe(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
