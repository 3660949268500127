"""A backbone plus the task's head plus one stage's PET mixins, with only that stage's parameters trainable."""

from sat_ehft.mixins import HEAD_NAME, attach


def head_spec(task, hidden_size):
    """Constructor kwargs of the task's ClassificationHead."""
    return {"hidden_size": hidden_size, "num_outputs": task.head_outputs, "pooling": task.pooling,
            "choices": task.choices}


def classifier_specs(backbone, task, stage, config):
    """{mixin name: kwargs}: the head first, then the stage's PET mixins."""
    return {HEAD_NAME: head_spec(task, backbone.config["hidden_size"]),
            **stage.mixin_specs(backbone.config, config)}


def build_classifier(backbone, task, stage, config):
    """Attach a fresh head and `stage`'s mixins to `backbone.model`; return (model, trainable names).

    The specs are recorded in `backbone.config["ehft_mixins"]`, so a saved copy rebuilds itself."""
    specs = classifier_specs(backbone, task, stage, config)
    backbone.config["ehft_mixins"] = specs
    model = attach(backbone.model, specs)
    model.unpad = config.unpad
    return model, stage.freeze_others(model, config)
