"""The class attributes that size every trainer of this plugin, mapped onto nnU-Net's own in one place: a budget
or a variant (variants.py) is a class that sets some of them, and means the same in whichever trainer it is mixed
into (pre-training, fine-tuning, scratch, nnU-Net's own CNN). The defaults are nnU-Net's."""
import torch


class RunLengthFromClassAttributes:
    epochs = 1000
    iterations_per_epoch = 250
    val_iterations_per_epoch = 50
    checkpoint_every = 50          # epochs between checkpoint_latest.pth writes
    test_time_mirroring = True     # False: 8x cheaper validation and prediction (the CPU budgets)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        self.save_every = self.checkpoint_every

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        augmentation = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.test_time_mirroring:
            self.inference_allowed_mirroring_axes = None
        return augmentation
