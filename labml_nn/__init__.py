"""Annotated implementations; this project holds `labml_nn.neox`, the annotated GPT-NeoX."""
