"""Training the compression restoration module (CRM) on a frozen IRN, as the official IJCV release's
IRN-Compression recipe does (codes/models/IRN_model_CRM.py, `only_jpeg_reconstruction`):

    HR -> IRN down -> 8-bit LR -> codec (real JPEG or WebP) -> CRM -> restored LR
    loss = lambda_restore |restored - LR|^2  (+ lambda_joint Charbonnier(IRN up(Q(restored), z), HR) from joint_from)

Only the CRM learns: IRN's weights are frozen (--init-from gives them), its downscale runs without a graph
and the codec sees no gradient; the optional joint loss reaches the CRM through IRN's inverse. The step, its
phases, late values, guard and checkpoints are engine/training/step.py's; `trainer_for` picks the trainer a
config asks for (--crm).
"""

import torch

from engine.data import codec
from engine.evaluation.compression import CompressedRescaler
from engine.model import crm, irn, losses
from engine.training.step import Trainer


def trainer_for(cfg, device, ranks=None):
    """The trainer of a config: a CRM on a frozen IRN with --crm, else IRN itself."""
    return RestorationTrainer(cfg, device, ranks) if cfg.crm else Trainer(cfg, device, ranks)


def validation_quality(cfg):
    """The quality a CRM run validates at: its fixed one, or the middle of its range."""
    low, high = codec.quality_range(cfg.codec_quality)
    return (low + high) // 2


class RestorationTrainer(Trainer):
    """A CRM, trained on a frozen IRN's LRs after the config's codec. `model` is the whole pipeline (validation
    scores it as it scores an IRN: HR -> down -> codec -> CRM -> up); a checkpoint holds the CRM as its
    model (engine.load returns it) and the frozen IRN beside it."""

    @staticmethod
    def build_model(cfg):
        frozen = Trainer.build_model(cfg).requires_grad_(False)
        restorer = crm.build(features=cfg.crm_features, blocks=cfg.crm_blocks, growth=cfg.crm_growth)
        return CompressedRescaler(frozen, cfg.codec, validation_quality(cfg), restorer)

    def trained_network(self):
        return self.model.crm

    @property
    def irn(self):
        return self.model.irn

    def weights(self):
        irn_weights = {"model": self.model.irn.state_dict(), "arch": self.model.irn.arch}
        return {"model": self.model.crm.state_dict(), "arch": self.model.crm.arch, "irn": irn_weights}

    def load_weights(self, state):
        self.model.crm.load_state_dict(state["model"])
        self.model.irn.load_state_dict(state["irn"]["model"])

    def losses(self, hr, noise, lr_ref, channel, timer, step):
        cfg = self.cfg
        with timer.phase("forward"), torch.no_grad():
            lr, _ = self.model.irn.downscale(hr)
        decoded = channel(lr)
        with timer.phase("forward"):
            restored = self.net(decoded)
            joint = cfg.lambda_joint > 0 and step >= cfg.joint_from
            if joint:  # the official joint loss: IRN's upscale of the restored LR, rounded to 8 bits
                reconstruction = losses.upscale_pass(self.model.irn, irn.quantize(restored), cfg.z_scale * noise)
        with timer.phase("loss"):
            weighted = {"restore": cfg.lambda_restore * losses.squared_error(restored, lr)}
            if joint:
                weighted["joint_rec"] = cfg.lambda_joint * losses.charbonnier(reconstruction, hr)
            return weighted
