"""EH-FT (Efficient Head Finetuning) on SwissArmyTransformer models.

Kept import-light so that the CLI starts fast; `import sat_ehft.backbone` registers our SAT model
classes, which SAT's `AutoModel.from_pretrained` needs before it can rebuild a converted checkpoint.
"""

__version__ = "0.1.0"
