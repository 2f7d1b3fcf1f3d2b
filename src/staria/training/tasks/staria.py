"""Staria: snippets -> encoder -> cross-attending decoder, LM loss on the piece's sequence."""

from pathlib import Path

import torch

from staria.models.xtransformers import bridge_keys, decoder_only_state_for
from staria.training.tasks.base import StepLoss, TrainingTask, load_weights, net_state


class StariaTask(TrainingTask):
    """Generative batches with `snippets`; only tokens in `loss_mask` count."""

    def step_loss(self, batch: dict[str, torch.Tensor]) -> StepLoss:
        inputs = (batch["snippets"], batch["snippet_mask"], batch["tokens"], batch["token_mask"])
        return self.next_token_loss(batch, *inputs)

    def init_encoder_from(self, path: str | Path, allow_pickle_runs_code: bool = False) -> None:
        """The snippet encoder's weights from another run: a contrastive run (its whole net is
        an encoder), a classifier or a Staria run (their `encoder`). `InitWeightsError` names
        the file and the keys when the shapes differ."""
        state = net_state(path, allow_pickle_runs_code, "init_encoder_from")
        if any(key.startswith("encoder.") for key in state):
            state = {
                key.removeprefix("encoder."): value
                for key, value in state.items()
                if key.startswith("encoder.")
            }
        load_weights(self.net.encoder, state, f"init_encoder_from={path}")

    def init_decoder_from(self, path: str | Path, allow_pickle_runs_code: bool = False) -> None:
        """The decoder's trunk, embeddings and head from a decoder-only run of the same shape
        (`model=baseline`): its layers move to their places between the cross-attention
        layers, which keep their initial values with the adapters (`decoder_only_state_for`)."""
        state = {
            key.removeprefix("net."): value
            for key, value in net_state(path, allow_pickle_runs_code, "init_decoder_from").items()
        }
        decoder = self.net.decoder.net
        load_weights(
            decoder,
            decoder_only_state_for(state, decoder),
            f"init_decoder_from={path} (a decoder-only run's weights)",
            may_miss=bridge_keys(decoder),
        )
