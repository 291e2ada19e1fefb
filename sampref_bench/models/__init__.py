"""SAM builders, checkpoint loading, text-prompt projection and U-Net baselines; built in later issues."""
