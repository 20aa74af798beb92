"""The model: 4-bit loading through Unsloth, LoRA scope, generation, and writing adapters and merged models.

Speed machinery is `titlegen.perf`, reached through its package only.
"""
