r"""
# Utilities

The pieces that sit around the model, each a module of its own so that it can be read (and copied) alone:

* **Using less memory.** `llm_int8.py` stores the weights of the linear layers in 8 bits and multiplies most of
  each product in int8, keeping the few outlier features of large models in floating point; it halves the
  memory of a layer and leaves its results almost unchanged.
* **Training.** `text_dataset.py` turns a text file into windows of token ids, `finetune.py` chooses which
  parameters train (all, the biases only, a few layers) and saves only those, and `trainer.py` is the loop that
  trains `model.py`'s modules on one process or several.
* **Command lines.** `cli.py` holds what every sample and command shares: where the demo model is, the dtype
  names and their default.

None of these modules is needed to run the model itself: `model.py` and `config.py` are enough for that.
"""
