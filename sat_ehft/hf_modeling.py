"""EH-FT classifiers for Hugging Face transformers: a RoBERTa or BERT encoder and the paper's head.

`sat-ehft export` writes this file beside the weights as modeling_ehft.py, so that

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

rebuilds the finetuned classifier without sat-ehft. It imports only torch and transformers. sat-ehft's own
head (sat_ehft.mixins.head) pools with the same function, `pool_features`, and trains with the same `task_loss`.

The head reads the final hidden states: 'cls' pooling takes the first token; 'spans' pooling (WiC) takes
[CLS, span1, span2, |span1 - span2|, span1 * span2] with the target word's token spans mean-pooled, given as
`spans` [batch, 2, 2] (first token, last token + 1). With `choices` > 1 (COPA) each sequence gets one score and
the logits are [batch, choices]; the input is [batch, choices, length] or its rows one choice after another.
A binary task's head has one output l (trained with BCE, as the original code did); the classifier returns the
two logits [0, l], so that softmax gives (1 - sigmoid(l), sigmoid(l)) and argmax the label, as Hugging Face's
`id2label` and text-classification pipeline read a two-label classifier.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel, RobertaConfig, RobertaModel, RobertaPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


def pool_features(hidden, pooling, spans=None):
    """The head's input from final hidden states [rows, length, hidden]: 'cls' or 'spans' (see above)."""
    cls = hidden[:, 0]
    if pooling == "cls":
        return cls
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    inside = ((positions >= spans[..., :1]) & (positions < spans[..., 1:])).to(hidden.dtype)  # [b, 2, length]
    first, second = (inside @ hidden / inside.sum(-1, keepdim=True)).unbind(1)
    return torch.cat([cls, first, second, (first - second).abs(), first * second], dim=-1)


def task_loss(scores, labels, objective):
    """Binary tasks: one logit with BCE; regression: MSE on the score; classes and choices: cross-entropy."""
    if objective == "regression":
        return F.mse_loss(scores.squeeze(-1).float(), labels.float())
    if objective == "binary":
        return F.binary_cross_entropy_with_logits(scores.squeeze(-1).float(), labels.float())
    return F.cross_entropy(scores.float(), labels.long())


def two_label_logits(logit):
    """[0, l] from a binary head's one logit l [rows, 1]: softmax of it is (1 - sigmoid(l), sigmoid(l))."""
    return torch.cat([torch.zeros_like(logit), logit], dim=-1)


class EhftHead(nn.Module):
    """hidden (x5 for spans) -> inner_size -> num_outputs, ReLU between; named as sat-ehft names it."""

    def __init__(self, config):
        super().__init__()
        head = config.ehft_head
        in_size = config.hidden_size * (5 if head["pooling"] == "spans" else 1)
        self.dense = nn.Linear(in_size, head["inner_size"])
        self.out = nn.Linear(head["inner_size"], head["num_outputs"])

    def forward(self, hidden, pooling, spans=None):
        return self.out(torch.relu(self.dense(pool_features(hidden, pooling, spans))))


class EhftClassifier:
    """What the RoBERTa and BERT classifiers share: encoder, head, choices, loss."""

    def _build(self, config, encoder_class):
        setattr(self, self.base_model_prefix, encoder_class(config, add_pooling_layer=config.ehft_head["pooler"]))
        self.head = EhftHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, spans=None, labels=None, **kwargs):
        head = self.config.ehft_head
        if input_ids.dim() == 3:  # [batch, choices, length] -> one row per choice
            input_ids, attention_mask = input_ids.flatten(0, 1), attention_mask.flatten(0, 1)
            token_type_ids = None if token_type_ids is None else token_type_ids.flatten(0, 1)
        encoder = getattr(self, self.base_model_prefix)
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         **kwargs).last_hidden_state
        logits = self.head(hidden, head["pooling"], spans)
        if head["choices"] > 1:
            logits = logits.view(-1, head["choices"])
        loss = None if labels is None else task_loss(logits, labels, head["objective"])
        if head["objective"] == "binary":
            logits = two_label_logits(logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class EhftRobertaConfig(RobertaConfig):
    model_type = "ehft-roberta"


class EhftBertConfig(BertConfig):
    model_type = "ehft-bert"


class EhftRobertaForSequenceClassification(EhftClassifier, RobertaPreTrainedModel):
    config_class = EhftRobertaConfig

    def __init__(self, config):
        super().__init__(config)
        self._build(config, RobertaModel)


class EhftBertForSequenceClassification(EhftClassifier, BertPreTrainedModel):
    config_class = EhftBertConfig

    def __init__(self, config):
        super().__init__(config)
        self._build(config, BertModel)
