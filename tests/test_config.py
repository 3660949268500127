"""Shipped configs load against the dataclass; stale keys and bad values fail with a name."""

import ast
import dataclasses
import inspect

import pytest
from conftest import REPO

from sat_ehft import config as config_module
from sat_ehft.config import FIELDS, Config, load_config, parse_overrides
from sat_ehft.tasks import TASKS

EPOCHS = {"rte": 60, "mrpc": 60, "boolq": 40, "wic": 40, "cb": 400, "copa": 400, "qnli": 10, "cola": 20, "sts-b": 20}


PAPER_KEYS = {"epochs", "batch_size", "lr"}  # what every task config must set itself


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    load_config(path)  # an unknown key or an ill-typed value fails here


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_config_loads_with_the_paper_setup(task):
    import yaml

    path = REPO / "configs" / f"{task}.yaml"
    assert PAPER_KEYS <= set(yaml.safe_load(path.read_text())), f"{path} must set {sorted(PAPER_KEYS)}"
    config = load_config(path)
    assert config.epochs == EPOCHS[task] and config.batch_size == 32
    assert config.lr == (3e-5 if task == "wic" else 1e-5)
    bert_large = load_config(REPO / "configs" / "bert-large" / f"{task}.yaml")
    assert config.recipe == bert_large.recipe == "original"
    from sat_ehft.recipes import ORIGINAL

    resolved = {key: getattr(config, key) for key in ORIGINAL}  # every value of the original recipe, none overridden
    assert resolved == {key: tuple(v) if isinstance(v, list) else v for key, v in ORIGINAL.items()}
    assert bert_large.best_metric == ("spearman" if task == "sts-b" else "original")  # Table 2: STS-B's Spearman


# Besides every key a recipe profile sets: what else decides what a study's runs train.
STUDY_KEYS = {"recipe", "epochs", "batch_size", "micro_batch_size", "lr", "stage1_lr", "stage1_share", "stage1_mode",
              "warmup", "max_length", "zero_stage", "unpad", "group_by_length", "eval_every", "best_metric"}
STUDY = sorted((REPO / "configs" / "minilm-study").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDY, ids=lambda p: p.name)
def test_the_study_configs_pin_every_key_that_changes_training(path):
    """A study half run must not change when a recipe profile (or a dataclass default) does: its files name
    recipe none and write every key themselves. A key added to a recipe later fails here until it is pinned."""
    import yaml

    from sat_ehft.recipes import RECIPES

    written = yaml.safe_load(path.read_text())
    recipe_keys = {key for values in RECIPES.values() for key in values}
    assert written["recipe"] == "none" and not (recipe_keys | STUDY_KEYS) - set(written)
    config = load_config(path)
    ratios = {k: v / config.lr for k, v in config.stage1_lr.items()}  # the paper's Stage-1 LRs to its FT LR of 1e-5
    assert ratios == pytest.approx({"bitfit": 50, "lora": 50, "prefix": 500, "lp": 100})
    assert config.stage1_share == 0.1 and config.precision == "fp32"


def test_the_study_configs_differ_only_in_their_task_settings():
    import yaml

    per_task = {"epochs", "batch_size", "micro_batch_size", "lr", "stage1_lr"}
    shared = [{k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in per_task} for path in STUDY]
    assert len(STUDY) >= 4 and all(values == shared[0] for values in shared)


def readme_recipe_table():
    """{key: {recipe: value}} from README.md's recipe table (each cell YAML in backticks)."""
    import yaml

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Recipes"):text.index("## Config keys")]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    names = ("none", "original", "paper")
    return {cells[0].strip(" `"): {n: yaml.safe_load(c.strip(" `")) for n, c in zip(names, cells[1:])} for cells in rows}


def test_the_readme_documents_every_config_key_with_its_default():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Config keys"):]
    cells = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    keys = {key.strip(" `") for row in cells for key in row[1].split(",")}  # a row may name a few keys
    assert keys | set(readme_recipe_table()) == set(FIELDS) and keys <= set(FIELDS)  # none missing, none stale
    defaults = Config()
    rows = {row[1].strip(" `"): row[2].strip() for row in cells if "," not in row[1]}
    for key, documented in rows.items():
        value = getattr(defaults, key)
        if isinstance(value, bool):
            assert documented == str(value).lower(), key
        elif isinstance(value, (int, float)):
            assert float(documented) == value, key


def test_each_recipe_resolves_to_the_readme_table():
    from sat_ehft.recipes import RECIPES

    table = readme_recipe_table()
    assert set(table) == {key for values in RECIPES.values() for key in values}  # every key a recipe sets
    for key, by_recipe in table.items():
        for recipe, documented in by_recipe.items():
            value = getattr(load_config(overrides={"recipe": recipe}), key)
            assert (list(value) if isinstance(value, tuple) else value) == documented, (key, recipe)


def test_a_file_and_set_override_the_recipe_key_by_key():
    rte = REPO / "configs" / "rte.yaml"
    config = load_config(rte, {"clip_grad": 0.5})
    assert (config.recipe, config.clip_grad, config.weight_decay, config.lr_schedule, config.epochs) == \
        ("original", 0.5, 0.01, "sat-annealing", 60)
    paper = load_config(rte, {"recipe": "paper"})
    assert (paper.lr_schedule, paper.weight_decay, paper.lora_r, paper.prefix_len, paper.stage1_lr["lp"], paper.epochs) \
        == ("linear", 0.1, 32, 16, 5e-4, 60)
    with pytest.raises(ValueError, match="--set recipe: unknown recipe 'fast'; known recipes: none, original, paper"):
        load_config(rte, {"recipe": "fast"})


def test_every_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(config_module))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config").body
    documented = {stmt.target.id for stmt, after in zip(body, body[1:])
                  if isinstance(stmt, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)}
    assert documented == {f.name for f in dataclasses.fields(Config)}


def test_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "stale.yaml"
    path.write_text("epochs: 3\nlearning_rate: 1e-5\n")
    with pytest.raises(ValueError, match=r"stale\.yaml: unknown config key 'learning_rate'; known keys: adam_betas"):
        load_config(path)


def test_bad_values_and_overrides():
    assert load_config(overrides=parse_overrides(["lr=3e-5", "lora_targets=[query, value]", "epochs=2"])) == \
        Config(lr=3e-5, lora_targets=("query", "value"), epochs=2)
    with pytest.raises(ValueError, match="--set epochs: config key 'epochs' expects int, got 'many'"):
        load_config(overrides=parse_overrides(["epochs=many"]))
    with pytest.raises(ValueError, match=r"--set 'lr': expected key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ValueError, match="precision must be one of"):
        load_config(overrides={"precision": "fp8"})
    with pytest.raises(ValueError, match="batch_size must be a multiple of micro_batch_size"):
        Config(batch_size=32, micro_batch_size=5)


def test_report_to_takes_one_name_a_list_or_none():
    assert load_config(overrides=parse_overrides(["report_to=wandb"])).report_to == ("wandb",)
    assert load_config(overrides=parse_overrides(["report_to=[tensorboard, wandb]"])).report_to == ("tensorboard", "wandb")
    assert load_config(overrides=parse_overrides(["report_to=[]"])).report_to == ()
    with pytest.raises(ValueError, match=r"report_to must name trackers among \('tensorboard', 'wandb'\)"):
        load_config(overrides=parse_overrides(["report_to=mlflow"]))
