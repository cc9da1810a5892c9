"""Joint fine-tuning from stock nnU-Net weights (nnunet_mtl.training.finetune, the init_from / heads_only_epochs knobs)."""
import os

import pytest
import torch
from torch import nn

from nnunet_mtl.training.finetune import IncompatibleWeights, load_stock_weights, resolve_checkpoint, set_heads_only
from nnunet_mtl.model.network import unwrap
from tests.helpers import make_trainer

pytestmark = pytest.mark.timeout(300)


class _Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.encoder = nn.Linear(3, width)
        self.heads = nn.ModuleDict({"t": nn.Linear(width, 2)})


def test_shape_mismatch_is_one_error_naming_key_and_shapes(tmp_path):
    path = str(tmp_path / "stock.pth")
    torch.save({"network_weights": {"encoder.weight": torch.zeros(5, 3), "encoder.bias": torch.zeros(5),
                                    "decoder.extra": torch.zeros(1)}}, path)
    with pytest.raises(IncompatibleWeights, match=r"encoder\.weight.*\(5, 3\).*\(4, 3\)"):
        load_stock_weights(_Net(4), path)
    net = _Net(5)
    report = load_stock_weights(net, path)
    assert report.new == ["heads.t.weight", "heads.t.bias"] and report.unused == ["decoder.extra"]
    assert torch.count_nonzero(net.encoder.weight) == 0
    with pytest.raises(FileNotFoundError, match="init_from"):
        resolve_checkpoint(str(tmp_path / "nowhere"), 0)


def test_init_from_stock_then_heads_only_phase_then_joint(stock_2d, dataset_2d):
    stock_model = stock_2d
    stock_file = resolve_checkpoint(stock_model, 0)
    assert stock_file == os.path.join(stock_model, "fold_0", "checkpoint_final.pth")
    stock = torch.load(stock_file, map_location="cpu", weights_only=False)["network_weights"]
    trainer = make_trainer(dataset_2d, fold=0, num_epochs=2, heads_only_epochs=1, init_from=stock_model)
    net = unwrap(trainer.network)
    own = net.state_dict()
    unet_keys = [k for k in own if not k.startswith("heads.")]
    head_keys = [k for k in own if k.startswith("heads.")]
    assert unet_keys and head_keys
    for k in unet_keys:
        assert torch.equal(own[k].cpu(), stock[k]), k
    with open(trainer.log_file) as f:
        log = f.read()
    assert f"New (not in the stock checkpoint, start fresh): {', '.join(head_keys)}" in log
    assert "Unused stock keys: none" in log

    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()           # epoch 0 < heads_only_epochs: U-Net frozen
    for _ in range(2):
        trainer.train_step(next(trainer.dataloader_train))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in unet_keys), "heads-only phase changed the U-Net"
    assert any(not torch.equal(before[k], after[k]) for k in head_keys), "heads did not train"

    trainer.current_epoch = 1
    trainer.on_train_epoch_start()           # phase over: the whole network trains
    trainer.train_step(next(trainer.dataloader_train))
    assert any(not torch.equal(before[k], net.state_dict()[k]) for k in unet_keys)
    assert "Heads-only phase over" in open(trainer.log_file).read()

    # under DDP the U-Net keeps its gradients (DDP expects them) and the optimiser drops them before the step
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert set_heads_only(net, True, trainer.optimizer, distributed=True)
    trainer.train_step(next(trainer.dataloader_train))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in unet_keys)
    assert any(not torch.equal(before[k], after[k]) for k in head_keys)
    assert set_heads_only(net, False, trainer.optimizer, distributed=True)
    trainer.train_step(next(trainer.dataloader_train))
    assert any(not torch.equal(before[k], net.state_dict()[k]) for k in unet_keys)

    # a continued run never reloads the stock weights
    trainer._continued = True
    trainer._maybe_init_from_stock()
    assert any(not torch.equal(stock[k], net.state_dict()[k].cpu()) for k in unet_keys)
    assert "init_from ignored" in open(trainer.log_file).read()
