"""`sat-ehft` (also `python -m sat_ehft`): one subcommand per job."""

import argparse
import errno
import os
import shutil
import sys
import textwrap
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np

PERCENTILES = (50, 90, 95, 99, 100)


def cmd_convert(args):
    from sat_ehft.convert import convert_hf_folder

    out = convert_hf_folder(args.hf_dir, args.out_dir)
    print(f"wrote SAT checkpoint folder {out}")


def split_report(task, split, examples, tokenizer, max_length):
    """Lines describing one split: size, label distribution, and token lengths given a tokenizer."""
    lines = [f"{split}: {len(examples)} examples"]
    if task.is_regression:
        labels = np.array([e.label for e in examples])
        lines.append(f"  label: mean {labels.mean():.3f}, std {labels.std():.3f}, "
                     f"min {labels.min():.3f}, max {labels.max():.3f}")
    else:
        counts = Counter(e.label for e in examples)
        for index, name in enumerate(task.labels):
            lines.append(f"  label {name}: {counts[index]} ({counts[index] / len(examples):.1%})")
    if tokenizer is not None:
        from sat_ehft.tasks import Encoding, encode_examples

        features = encode_examples(task, examples, tokenizer, Encoding(max_length))
        lengths = np.array([n for f in features for n in task.lengths(f)])
        shown = ", ".join(f"p{p} {np.percentile(lengths, p):.0f}" for p in PERCENTILES[:-1])
        lines.append(f"  tokens: {shown}, max {lengths.max()}; "
                     f"{(lengths >= max_length).sum()} sequences cut at {max_length}")
    return lines


def cmd_data(args):
    from sat_ehft.tasks import get_task

    task = get_task(args.task)
    tokenizer = None
    if args.model:
        from sat_ehft.folders import load_model_tokenizer

        tokenizer = load_model_tokenizer(args.model)
    print(f"task {task.name} ({task.benchmark}/{task.folder}), metrics: {', '.join(task.metrics)}")
    for split in ("train", "dev"):
        examples = task.read_split(None if args.hub else args.data_dir, split)
        print("\n".join(split_report(task, split, examples, tokenizer, args.max_length)))


def default_config(task):
    """configs/<task>.yaml as shipped with sat-ehft (a checkout's, or the installed package's)."""
    from sat_ehft.config import configs_dir

    path = configs_dir() / f"{task}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; this install of sat-ehft lacks its configs/. "
                                "Pass --config FILE (or reinstall sat-ehft)")
    return path


def cmd_train(args):
    from sat_ehft.config import load_config, parse_overrides
    from sat_ehft.methods import get_method

    config = load_config(args.config or default_config(args.task), parse_overrides(args.set))
    get_method(args.method).check(config)  # before SAT and DeepSpeed are imported (run checks it too)
    from sat_ehft.pipeline import RunSpec, run
    from sat_ehft.runspec import absolute_path

    spec = RunSpec(task=args.task, method=args.method, model=absolute_path(args.model),
                   data_dir=None if args.hub else os.path.abspath(args.data_dir), seed=args.seed, config=config)
    result = run(spec, args.out, stage_number=args.stage)
    if result:
        print(f"{result['task']} {result['method']} seed {result['seed']}: best {result['metric']} "
              f"{result['best']:.4f} (epoch {result['best_epoch']}), last {result['last']:.4f}")
    if result and result["collapsed"]:
        print(f"warning: {args.out}: even the best epoch predicted one class for every dev example (a collapsed "
              "run, the signature of a failed one); try another seed, a lower lr or more epochs", file=sys.stderr)


def cmd_predict(args):
    from sat_ehft.pipeline import refuse_links
    from sat_ehft.predict import default_output, load_classifier, predict, read_examples, run_spec, write_predictions

    out = args.out or default_output(args.run, args.split, args.format)
    if os.path.abspath(out).startswith(os.path.abspath(args.run) + os.sep):
        refuse_links(args.run)  # never write through a link out of the run folder
    examples = read_examples(run_spec(args.run), args.split, args.data_dir, args.hub)  # before the model loads
    classifier = load_classifier(args.run, args.weights)
    predictions = predict(classifier, args.split, examples=examples)
    path = write_predictions(predictions, out, args.format)
    print(f"{classifier.spec.task} {args.split}: {len(predictions.examples)} predictions of {classifier.source}, "
          f"{classifier.weights} weights, written to {path}")
    if predictions.metrics:
        print("metrics: " + ", ".join(f"{name} {value:.4f}" for name, value in predictions.metrics.items()))
    if predictions.collapsed:
        print(f"warning: every prediction is {predictions.collapsed}: the classifier does not tell the examples "
              "apart (a collapsed run)", file=sys.stderr)


def cmd_export(args):
    from sat_ehft.export import export_run

    difference, weights = export_run(args.run, args.out, args.weights)
    print(f"wrote {args.out}: a Hugging Face classifier (AutoModelForSequenceClassification.from_pretrained(..., "
          f"trust_remote_code=True)) with {weights} weights; reloaded and checked, logits within {difference:.2g} "
          "of sat-ehft's")


def cmd_sweep(args):
    from sat_ehft.sweep import (GridSettings, SlurmOptions, absolute, make_grid, parse_vary, run_grid,
                                write_launchers)

    runs = make_grid(args.tasks, args.methods, args.seeds, parse_vary(args.vary))
    settings = absolute(GridSettings(model=args.model, data_dir=args.data_dir, config_dir=args.config_dir,
                                     sets=tuple(args.set)))
    settings.check(runs)
    if args.launchers:
        slurm = SlurmOptions(gpus_per_run=args.gpus_per_run, partition=args.slurm_partition, time=args.slurm_time,
                             cpus_per_task=args.slurm_cpus, mem=args.slurm_mem, setup=args.slurm_setup)
        write_launchers(args.out, runs, settings, slurm=slurm, hostfile=args.hostfile)
        print(f"wrote {args.out}/commands.txt and slurm.sbatch" + (" and hostfile_launch.sh" if args.hostfile else ""))
        return
    failed = run_grid(args.out, runs, settings, workers=args.workers)
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) did not finish; rerun the same command to resume them")


def cmd_report(args):
    from sat_ehft.report import write_report

    rows = write_report(args.out, table=args.table, baseline=args.baseline)
    print(f"wrote {args.out}/report.md and report.csv ({len(rows)} task x method rows)")


def cmd_analyze(args):
    from sat_ehft.analyze import FIGURES

    runs = []
    for folder in map(Path, args.runs):  # a run folder, or a grid folder holding run folders (its finished ones)
        runs += [folder] if (folder / "run.json").is_file() else sorted(p.parent for p in folder.rglob("result.json"))
    if not runs:
        raise FileNotFoundError(f"no run folders (with run.json, or finished: result.json) in {' '.join(args.runs)}")
    FIGURES[args.figure](runs, args.out)
    print(f"wrote {args.out}: figure {args.figure} (PNG and JSON)")


def cmd_bench(args):
    from sat_ehft import bench
    from sat_ehft.folders import load_model_tokenizer

    lengths = bench.task_lengths(args.task, args.data_dir, load_model_tokenizer(args.tokenizer), args.max_length)
    result = bench.bench(kind=args.kind, shape=args.shape, precision=args.precision, batch_size=args.batch_size,
                         steps=args.steps, warmup=args.warmup, lengths=lengths, method=args.method,
                         unpad=not args.padded)
    result["command"] = "sat-ehft " + " ".join(sys.argv[1:])
    result["lengths_from"] = f"{args.task} train, tokenized by {args.tokenizer}, max {args.max_length}"
    if args.out:
        bench.save(result, args.out)
    print(bench.table(result))


def positive_int(text):
    """argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def cmd_cost(args):
    from sat_ehft.atomic import read_json
    from sat_ehft.config import configs_dir, load_config
    from sat_ehft.cost import table

    tasks = {read_json(Path(run) / "run.json")["task"] for run in args.runs}
    paper_epochs = {task: load_config(configs_dir() / f"{task}.yaml").epochs for task in tasks}
    print(table(args.runs, paper_epochs, args.eval_every))


def registered(registry):
    """An argparse type: a name of `registry` (tasks or methods), checked on the command line, before SAT and
    DeepSpeed are imported; it returns the registered spelling (sts-b for STSB)."""

    def name(text):
        try:
            return registry.get_item(text).name
        except KeyError as err:
            raise argparse.ArgumentTypeError(err.args[0]) from None

    name.__name__ = registry.kind  # argparse names the type in its messages
    return name


class NamesWhole(argparse.HelpFormatter):
    """Help text wrapped between words only: a method's name (ehft-prefix) is copied from --help whole."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser():
    from sat_ehft.config import configs_dir
    from sat_ehft.methods import METHODS
    from sat_ehft.runspec import WEIGHTS
    from sat_ehft.sweep import SlurmOptions
    from sat_ehft.tasks import TASKS

    task, method = registered(TASKS), registered(METHODS)
    tasks_help, methods_help = f"one of: {', '.join(TASKS)}", f"one of: {', '.join(METHODS)}"
    recipes_help = ("'original' (what the authors' code ran; the shipped task configs'), 'paper' (the paper's text), "
                    "'none' (the dataclass defaults; with --config FILE naming no recipe)")
    parser = argparse.ArgumentParser(prog="sat-ehft", description=__doc__, formatter_class=NamesWhole)
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=partial(argparse.ArgumentParser, formatter_class=NamesWhole))

    convert = commands.add_parser("convert", help="convert a Hugging Face RoBERTa/BERT folder to a SAT folder")
    convert.add_argument("hf_dir", help="Hugging Face checkpoint folder (config.json + weights)")
    convert.add_argument("out_dir", help="new SAT checkpoint folder to write (must not exist)")
    convert.set_defaults(func=cmd_convert)

    data = commands.add_parser("data", help="split sizes, label distribution and token lengths of a task")
    data.add_argument("--task", required=True, type=task, help=tasks_help)
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="folder holding superglue/<TASK>/... and glue/<TASK>/...")
    source.add_argument("--hub", action="store_true", help="read the task from the Hugging Face hub")
    data.add_argument("--model", help="model folder or name whose tokenizer measures token lengths")
    data.add_argument("--max-length", type=positive_int, default=512, help="truncation length for the token counts")
    data.set_defaults(func=cmd_data)

    train = commands.add_parser("train", help="train one task with one method (all stages, or --stage N)")
    train.add_argument("--task", required=True, type=task, help=tasks_help)
    train.add_argument("--method", required=True, type=method, help=methods_help)
    train.add_argument("--model", required=True, help="SAT folder, Hugging Face folder or model name")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="folder holding superglue/<TASK>/... and glue/<TASK>/...")
    source.add_argument("--hub", action="store_true", help="read the task from the Hugging Face hub")
    train.add_argument("--seed", type=int, default=1, help="random seed (head init, data order, dropout)")
    train.add_argument("--out", required=True, help="run folder; rerunning resumes it")
    train.add_argument("--config", help="YAML config (default: the configs/<task>.yaml shipped with sat-ehft, "
                                        "whose recipe is 'original')")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a config key; recipe=NAME picks a profile the other keys build on: {recipes_help}")
    train.add_argument("--stage", type=int, help="run only this stage (1-based), as finetune_scripts/ do")
    train.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's
    train.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="a finished run's predictions on dev or test (jsonl, or leaderboard files)")
    predict.add_argument("run", help="run folder written by sat-ehft train")
    predict.add_argument("--split", choices=["dev", "test"], default="dev",
                         help="test: the official, label-less test file (DATA_DIR/.../test.jsonl or test.tsv)")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--data-dir", help="folder holding superglue/<TASK>/... and glue/<TASK>/... "
                        "(default: the run's own)")
    source.add_argument("--hub", action="store_true", help="read the split from the Hugging Face hub")
    predict.add_argument("--format", choices=["jsonl", "leaderboard"], default="jsonl",
                         help="jsonl: a line per example with the label, its probability and all probabilities; "
                         "leaderboard: the GLUE/SuperGLUE server's file for this task (RTE.jsonl, MRPC.tsv, ...)")
    predict.add_argument("--out", help="jsonl: the file to write (default RUN/predictions/SPLIT.jsonl); "
                         "leaderboard: the folder to write the task's file into (default RUN/leaderboard/SPLIT)")
    weights_help = ("the final stage's best dev epoch's weights (its best.pt; the last epoch's where the run kept "
                    "none) or the last epoch's (default: best)")
    predict.add_argument("--weights", choices=WEIGHTS, default="best", help=weights_help)
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="a finished run's classifier as a Hugging Face folder (with its head)")
    export.add_argument("run", help="run folder written by sat-ehft train")
    export.add_argument("out", help="new folder to write (must not exist)")
    export.add_argument("--weights", choices=WEIGHTS, default="best", help=weights_help)
    export.set_defaults(func=cmd_export)

    sweep = commands.add_parser("sweep", help="run a grid of tasks x methods x seeds (resumable), or write launchers")
    sweep.add_argument("--tasks", nargs="+", required=True, type=task, help=tasks_help)
    sweep.add_argument("--methods", nargs="+", required=True, type=method, help=methods_help)
    sweep.add_argument("--seeds", nargs="+", type=int, required=True)
    sweep.add_argument("--model", required=True, help="backbone for every run")
    sweep.add_argument("--data-dir", required=True, help="official files for every task")
    sweep.add_argument("--out", required=True, help="grid folder: OUT/<task>/<method>/seed<N>/")
    sweep.add_argument("--config-dir", default=str(configs_dir()),
                       help="folder with a <task>.yaml per task (default: the configs/ shipped with sat-ehft)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    sweep.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                       help="add a grid dimension over a config key (e.g. lora_r=8,16,32)")
    sweep.add_argument("--workers", type=int, help="runs at once (default: one per visible GPU, else 1); without "
                       "GPUs each gets cores/N threads unless OMP_NUM_THREADS is set")
    sweep.add_argument("--launchers", action="store_true",
                       help="write commands.txt, slurm.sbatch (and hostfile_launch.sh) instead of running")
    slurm = SlurmOptions()
    sweep.add_argument("--gpus-per-run", type=int, default=slurm.gpus_per_run,
                       help="with --launchers: GPUs per Slurm array task (0: none)")
    sweep.add_argument("--slurm-partition", default=slurm.partition, help="with --launchers: partition (default: "
                       "the cluster's)")
    sweep.add_argument("--slurm-time", default=slurm.time, help="with --launchers: time limit per run (%(default)s)")
    sweep.add_argument("--slurm-cpus", type=int, default=slurm.cpus_per_task,
                       help="with --launchers: CPU cores per run (%(default)s)")
    sweep.add_argument("--slurm-mem", default=slurm.mem, help="with --launchers: memory per run (%(default)s)")
    sweep.add_argument("--slurm-setup", default=slurm.setup,
                       help="with --launchers: a shell line each task runs first, e.g. 'source venv/bin/activate'")
    sweep.add_argument("--hostfile", help="with --launchers: DeepSpeed hostfile for hostfile_launch.sh")
    sweep.set_defaults(func=cmd_sweep)

    report = commands.add_parser("report", help="report.md and report.csv of a grid folder")
    report.add_argument("out", help="grid folder written by sat-ehft sweep (or any folder of run folders)")
    report.add_argument("--table", default="1", choices=["1", "2", "3", "4"], help="the paper's table to compare with")
    report.add_argument("--baseline", metavar="METHOD",
                        help="compare every method with this one (e.g. ft): difference over seeds, 95%% interval, "
                             "permutation p-value")
    report.set_defaults(func=cmd_report)

    analyze = commands.add_parser("analyze", help="a figure of the paper from run folders (PNG + JSON)")
    analyze.add_argument("figure", choices=["1", "4", "5", "6", "7"],
                         help="1 feature change, 4 t-SNE of the head, 5 weight distance, 6 Stage-1 share, 7 loss")
    analyze.add_argument("runs", nargs="+",
                         help="run folders (sat-ehft train --out ...) or grid folders holding them (their finished runs)")
    analyze.add_argument("--out", required=True, help="folder for figureN_*.png and .json")
    analyze.set_defaults(func=cmd_analyze)

    bench = commands.add_parser("bench", help="our training step against Hugging Face's, same process, same batches")
    bench.add_argument("--kind", choices=["roberta", "bert"], default="roberta")
    bench.add_argument("--shape", choices=["tiny", "base", "large"], default="tiny", help="random weights of this size")
    bench.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype, both sides")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--steps", type=int, default=10, help="timed steps per side")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    bench.add_argument("--method", default="ft", type=method,
                       help="whose first stage decides what trains on our side; " + methods_help)
    bench.add_argument("--padded", action="store_true",
                       help="keep our side on the padded layout (config unpad: false), to see what unpadding buys")
    bench.add_argument("--task", default="rte", type=task,
                       help="task whose training-set token lengths the batches follow; " + tasks_help)
    bench.add_argument("--data-dir", required=True, help="official files of --task")
    bench.add_argument("--tokenizer", default="all-MiniLM-L6-v2", help="model whose tokenizer measures the lengths")
    bench.add_argument("--max-length", type=int, default=512)
    bench.add_argument("--out", help="also write the result as JSON here")
    bench.set_defaults(func=cmd_bench)

    cost = commands.add_parser("cost", help="where finished runs' time went, projected to the paper's epochs")
    cost.add_argument("runs", nargs="+", help="run folders (each projected to configs/TASK.yaml's epochs)")
    cost.add_argument("--eval-every", type=positive_int, default=None,
                      help="project as if the runs evaluated every N epochs (and at each stage's end)")
    cost.set_defaults(func=cmd_cost)
    return parser


# The commands that import SAT and DeepSpeed, or start processes that do.
LAUNCHING_COMMANDS = ("train", "predict", "export", "sweep", "analyze", "bench", "convert")


def lost_rank(err):
    """A collective failed because another rank is gone: its connections closed, or it stayed silent past the
    collective timeout (gloo's errors, torch's store errors)."""
    torch = sys.modules.get("torch")
    return (torch is not None and isinstance(err, torch.distributed.DistError)) or \
        (isinstance(err, RuntimeError) and "/gloo/" in str(err))


def error_message(err):
    """One line for a failure the user can act on: our own messages as they are, an operating-system error with
    its file (and, for a full disk, the space left there)."""
    if isinstance(err, KeyError) and err.args:
        return err.args[0]
    if lost_rank(err):
        return (f"a rank of this launch stopped or stopped answering, on this node or another (see that node's "
                f"output); every rank stops. Rerun the same command on every node: the run resumes from its last "
                f"checkpoint. ({err})")
    if type(err) in (FileNotFoundError, FileExistsError) and err.filename is None:
        return str(err)  # ours: the message already names the file
    if isinstance(err, OSError):
        message = f"{err.filename or 'a file'}: {err.strerror or err}"
        if err.errno == errno.ENOSPC and err.filename:
            existing = next(p for p in Path(err.filename).absolute().parents if p.exists())
            written = getattr(err, "bytes_written", None)
            needed = f"; the write failed after {written / 2 ** 20:.0f} MiB: it needs more" if written else ""
            message += (f" ({shutil.disk_usage(existing).free / 2 ** 20:.0f} MiB free there now{needed}; free some "
                        "and rerun)")
        return message
    return str(err)


def quiet_notices():
    """SAT logs its notices at INFO, and DeepSpeed warns on every CPU launch that it found no GPU: lines before
    each run's own that say nothing a user acts on. SAT's warnings stay; SAT_LOGLEVEL or DS_ACCELERATOR set by
    the user win (SAT_LOGLEVEL=INFO brings the notices back)."""
    os.environ.setdefault("SAT_LOGLEVEL", "WARNING")
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in LAUNCHING_COMMANDS:
        quiet_notices()
    try:
        args.func(args)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        print(f"sat-ehft {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 2
    return 0
