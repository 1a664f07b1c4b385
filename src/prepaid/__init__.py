"""prepaid: sell prepaid credits for AI and pay-per-use apps, and spend them safely."""

__version__ = "0.1.0"
