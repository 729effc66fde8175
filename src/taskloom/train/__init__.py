"""LoRA training and evaluation, written out explicitly (torchtune style: one readable loop).

`lora.train_adapter` trains one adapter for a task; `evaluate.evaluate_task` scores the base model, an
adapter or a full (merged) model on a task's eval split.
"""
