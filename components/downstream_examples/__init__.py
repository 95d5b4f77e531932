"""Downstream training examples: the ad rows with UR, IR, CR(u), CR(i) as of before each row."""
