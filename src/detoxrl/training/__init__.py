"""Training stages: sft.py (TRL SFTTrainer), dpo.py (TRL DPOTrainer), common.py (what those two share), ppo.py."""
