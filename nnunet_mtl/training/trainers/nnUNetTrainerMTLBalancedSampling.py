"""Class-balanced case sampling instead of class weights: the training loader draws cases with
probability 1 / (count of their class) for one classification target (``balance_target``, default the
first), and the loss weights every class 1 (nnunet_mtl/training/sampling.py)."""
from nnunet_mtl.training.sampling import balanced_case_probabilities, balancing_target, build_dataloaders
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTLBalancedSampling(nnUNetTrainerMTL):
    use_class_weights = False
    balance_target = None  # a classification target's name; None: the first

    def get_dataloaders(self):
        tr_keys, _ = self.do_split()
        target = balancing_target(self.case_table, self.balance_target)
        probs = balanced_case_probabilities(tr_keys, self.case_table, target)
        self.print_to_log_file(f"Class-balanced sampling on '{target}' over {len(tr_keys)} training cases "
                               f"(class weights set to 1)")
        return build_dataloaders(self, probs)
