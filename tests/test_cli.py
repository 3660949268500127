"""`sat-ehft data` and `sat-ehft convert` as a user runs them."""

import os
import shutil
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_hf_model
from test_tasks import OFFICIAL_SIZES

from sat_ehft.cli import main


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_data_reports_official_sizes(shared_data, capsys, name):
    assert main(["data", "--task", name, "--data-dir", str(shared_data)]) == 0
    out = capsys.readouterr().out
    train, dev = OFFICIAL_SIZES[name]
    assert f"train: {train} examples" in out and f"dev: {dev} examples" in out


def test_data_with_model_reports_labels_and_token_lengths(shared_data, minilm_dir, minilm_tokenizer, capsys):
    assert main(["data", "--task", "cb", "--data-dir", str(shared_data), "--model", str(minilm_dir),
                 "--max-length", "64"]) == 0
    out = capsys.readouterr().out
    dev = out[out.index("dev:"):]
    assert re.search(r"label entailment: 23 \(41\.1%\)", dev) and "label neutral: 5 (8.9%)" in dev
    from sat_ehft.tasks import get_task

    task = get_task("cb")
    lengths = [len(minilm_tokenizer(e.fields["premise"], e.fields["hypothesis"], truncation=True,
                                    max_length=64)["input_ids"]) for e in task.read(shared_data, "dev")]
    cut = sum(n >= 64 for n in lengths)
    assert f"max {max(lengths)}; {cut} sequences cut at 64" in dev


def test_module_entry_point_and_errors(shared_data):
    run = subprocess.run([sys.executable, "-m", "sat_ehft", "data", "--task", "nope", "--data-dir", str(shared_data)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2
    assert "unknown task 'nope'; known tasks: boolq, cb, cola, copa, mrpc, qnli, rte, sts-b, wic" in run.stderr


def test_data_names_missing_split_file(tmp_path, capsys):
    assert main(["data", "--task", "boolq", "--data-dir", str(tmp_path)]) == 2
    assert "superglue/BoolQ/train.jsonl: missing" in capsys.readouterr().err


@pytest.mark.parametrize("length", ["0", "-3", "ten"])
def test_data_refuses_a_max_length_that_is_no_length(tmp_path, capsys, length):
    """--max-length 0 printed "250 sequences cut at 0"."""
    with pytest.raises(SystemExit):
        main(["data", "--task", "rte", "--data-dir", str(tmp_path), "--max-length", length])
    assert f"argument --max-length: expected a positive integer, got {length!r}" in capsys.readouterr().err


def test_convert_writes_a_folder_sat_automodel_loads(tmp_path, capsys):
    from sat.model.base_model import AutoModel

    import sat_ehft.backbone  # noqa: F401  (registers the backbone classes with SAT)

    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "sat")]) == 0
    assert f"wrote SAT checkpoint folder {tmp_path / 'sat'}" in capsys.readouterr().out
    model, args = AutoModel.from_pretrained(str(tmp_path / "sat"))
    model.eval()
    ids = torch.randint(3, 120, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (model.encode(ids, mask) - expected).abs().max() < 1e-5
    assert args.layernorm_order == "post" and args.num_types == 2
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "sat")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_train_errors_name_what_is_wrong(tmp_path, tiny_bert, rte_dir, capsys):
    base = ["train", "--task", "rte", "--model", str(tiny_bert), "--data-dir", str(rte_dir), "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="2"):
        main([*base, "--method", "ehft-adapter"])
    assert "argument --method: unknown method 'ehft-adapter'; known methods: bitfit" in capsys.readouterr().err
    assert main([*base, "--method", "ft", "--set", "learning_rate=1e-5"]) == 2
    assert "--set learning_rate: unknown config key 'learning_rate'" in capsys.readouterr().err
    assert main([*base, "--method", "ehft-bitfit", "--stage", "3"]) == 2
    assert "--stage 3: method ehft-bitfit has stages 1..2" in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()  # nothing is written for a command that cannot run


def test_help_lists_every_task_and_method():
    from sat_ehft.methods import METHODS
    from sat_ehft.tasks import TASKS

    for command in ("train", "sweep"):
        run = subprocess.run([sys.executable, "-m", "sat_ehft", command, "--help"], capture_output=True, text=True,
                             cwd=REPO, timeout=120, env={**os.environ, "COLUMNS": "1000"})  # no wrapped lines
        assert run.returncode == 0
        assert f"one of: {', '.join(TASKS)}" in run.stdout and f"one of: {', '.join(METHODS)}" in run.stdout
        if command == "train":  # the recipes by name, and which one the shipped configs use
            assert "'original' (what the authors' code ran; the shipped task configs')" in run.stdout
            assert "'paper' (the paper's text)" in run.stdout and "'none'" in run.stdout


def test_help_on_a_narrow_terminal_keeps_every_method_name_whole(capsys, monkeypatch):
    """Wrapped at a hyphen, --help showed 'ehft-' and 'prefix' on two lines: a user copied a broken name."""
    from sat_ehft.cli import main
    from sat_ehft.methods import METHODS

    monkeypatch.setenv("COLUMNS", "50")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    words = capsys.readouterr().out.replace(",", " ").split()
    assert all(name in words for name in METHODS), [name for name in METHODS if name not in words]


@pytest.mark.parametrize("option, value, message", [("--method", "ehft-adapter", "unknown method 'ehft-adapter'"),
                                                    ("--task", "sst2", "unknown task 'sst2'")])
def test_unknown_names_fail_before_sat_and_deepspeed_are_imported(tmp_path, option, value, message):
    argv = {"--task": "rte", "--method": "ft", option: value}
    probe = ("import sys\nfrom sat_ehft.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n"
             "    print(exit.code, sorted(m for m in ('sat', 'deepspeed') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe, "train", "--task", argv["--task"], "--method", argv["--method"],
                          "--model", "m", "--data-dir", "d", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.stdout.split("\n")[0] == "2 []"
    assert f"argument {option}: {message}" in run.stderr
    assert not (tmp_path / "run").exists()


def test_task_names_are_taken_in_any_spelling(capsys, shared_data):
    assert main(["data", "--task", "STSB", "--data-dir", str(shared_data)]) == 0
    assert capsys.readouterr().out.startswith("task sts-b (glue/STS-B)")


@pytest.mark.parametrize("method, options, message", [
    ("ft", ["--set", "micro_batch_size=0"], "invalid config: micro_batch_size must be positive"),
    ("ft", ["--set", "eval_batch_size=0"], "invalid config: eval_batch_size must be positive"),
    ("ehft-bitfit", ["--set", "epochs=1", "--set", "stage1_mode=stage2-fixed"],
     "invalid config for ehft-bitfit: epochs=1 with stage1_mode=stage2-fixed leaves stage2 0 epochs"),
    ("ehft-lora", ["--set", "stage1_lr={bitfit: 1e-3}"],
     "invalid config for ehft-lora: stage1_lr has no 'lora' entry (stage1's peak LR); it has bitfit"),
])
def test_a_config_that_cannot_train_fails_before_anything_is_written(tmp_path, tiny_bert, rte_dir, capsys, method,
                                                                       options, message):
    argv = ["train", "--task", "rte", "--method", method, "--model", str(tiny_bert), "--data-dir", str(rte_dir),
            "--out", str(tmp_path / "run"), *options]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"sat-ehft train: error: {message}\n"  # one line, and nothing else
    assert not (tmp_path / "run").exists()


def test_bad_files_get_one_line_naming_them(tmp_path, tiny_bert, rte_dir, capsys):
    base = ["train", "--task", "rte", "--method", "ft", "--model", str(tiny_bert), "--data-dir", str(rte_dir)]
    (tmp_path / "bad.yaml").write_text("epochs: 2\nlr: [1e-5\nbatch_size: 8\n")
    assert main([*base, "--out", str(tmp_path / "run"), "--config", str(tmp_path / "bad.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"sat-ehft train: error: {tmp_path / 'bad.yaml'}:3: not valid YAML (")

    (tmp_path / "a-file").write_text("")
    assert main([*base, "--out", str(tmp_path / "a-file" / "run")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"sat-ehft train: error: {tmp_path / 'a-file' / 'run'}: Not a directory"

    hf = tmp_path / "truncated-hf"
    shutil.copytree(tiny_bert, hf)
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main([*base, "--model", str(hf), "--out", str(tmp_path / "run2")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"sat-ehft train: error: {weights}: unreadable (")


def test_a_truncated_trained_pt_names_itself_and_what_to_do(tmp_path, tiny_bert, rte_dir, capsys):
    base = ["train", "--task", "rte", "--method", "ehft-bitfit", "--model", str(tiny_bert), "--data-dir",
            str(rte_dir), "--out", str(tmp_path), "--set", "epochs=2", "--set", "max_length=64"]
    assert main([*base, "--stage", "1"]) == 0
    trained = tmp_path / "stage1" / "trained.pt"
    trained.write_bytes(trained.read_bytes()[:2000])
    capsys.readouterr()
    assert main([*base, "--stage", "2"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"sat-ehft train: error: {trained}: unreadable (")
    assert last.endswith(f"delete the folder {tmp_path / 'stage1'} and rerun the training command: that stage is "
                         "trained again")
