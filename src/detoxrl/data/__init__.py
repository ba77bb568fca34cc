"""Raw-record parsing (HH-RLHF, RealToxicityPrompts, ToxicChat, RewardBench), splits, prompt formats, labels."""
