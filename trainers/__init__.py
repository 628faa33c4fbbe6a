"""Thin modules that nnU-Net's external-trainer search (``nnUNet_extTrainer``) imports.

The trainers live in the ``nnunet_mim`` package; these modules only re-export them, so each
class is defined once whatever name nnU-Net imports it under. Print the path to export with
``nnunet-mim env``.
"""
