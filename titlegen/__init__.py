"""titlegen: QLoRA fine-tuning (Unsloth) of small instruct LLMs to title paper abstracts, scored with BERTScore.

Importing the package is cheap: the model stack loads only when a model is built.
"""

__version__ = "0.1.0"
