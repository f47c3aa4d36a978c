r"""
# Training

Everything that changes the model's weights lives here, apart from the model: the same `NeoXModel` (`model.py`)
that generation runs is trained, from scratch or from a checkpoint loaded by `LayerLoader` (`loader.py`), by
three modules, each readable (and copyable) alone:

* `text_dataset.py` turns a text file into windows of token ids, the samples of next-token prediction;
* `finetune.py` chooses which parameters train (all, the biases only, a few layers) and saves only those,
  as a small checkpoint that loads on top of the original;
* `lora.py` adds low-rank adapters (LoRA) to the linear layers instead, and merges them back into the weights
  (`checkpoint/adapters.py` saves and reads them in peft's format);
* `trainer.py` is the loop: optimizer, learning-rate schedule, mixed precision, gradient accumulation and
  activation checkpointing, on one process or several.

`samples/train_demo.py` trains the small demo model from scratch with them, and `samples/finetune.py`
fine-tunes any checkpoint on your own text.
"""
