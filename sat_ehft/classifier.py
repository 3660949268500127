"""A backbone plus the task's head plus one stage's PET mixins, with only that stage's parameters trainable."""

from sat_ehft.mixins import ClassificationHead, add_head


def make_head(task, hidden_size):
    return ClassificationHead(hidden_size, task.head_outputs, pooling=task.pooling, choices=task.choices)


def build_classifier(backbone, task, stage, config):
    """Attach a fresh head and `stage`'s mixins to `backbone.model`; return (model, trainable names)."""
    model = add_head(backbone.model, make_head(task, backbone.config["hidden_size"]))
    stage.add_mixins(model, backbone.config, config)
    return model, stage.freeze_others(model, config)
