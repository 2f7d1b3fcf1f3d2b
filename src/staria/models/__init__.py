"""Networks: snippet encoder, cross-attending decoder, Staria, decoder-only baseline, classifier."""

from staria.models.baseline import DecoderOnlyBaseline
from staria.models.classifier import ClassifierLogits, SequenceClassifier
from staria.models.decoder import CrossAttendingDecoder
from staria.models.encoder import SnippetEncoder
from staria.models.staria import StariaModel

__all__ = [
    "ClassifierLogits",
    "CrossAttendingDecoder",
    "DecoderOnlyBaseline",
    "SequenceClassifier",
    "SnippetEncoder",
    "StariaModel",
]
