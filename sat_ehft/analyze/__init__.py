"""`sat-ehft analyze`: the paper's figures from run folders, each as a PNG plus the JSON behind it.

Reading only run folders (and, for features, rebuilding models from them), never reaching into training.
"""

from sat_ehft.analyze.figures import FIGURES

__all__ = ["FIGURES"]
