"""Meta-LoRA: write a working LoRA adapter for a new task from its description.

- bank.py: the tasks, built by code from the offline corpora, in tiers seen / val (the bank) and
  near / far (held out), with no held-out eval text in any bank task's data;
- build.py: `taskloom metalora build`, one trained adapter per task, recorded in Feast, and bank.json.
"""
