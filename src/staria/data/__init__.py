"""Data stage: synthetic and real MIDI pieces, their labels, and the datasets built from them."""
