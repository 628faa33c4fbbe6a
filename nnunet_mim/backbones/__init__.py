"""Networks other than the hybrid that MiM and MAE pre-train, one module each: ``resenc`` (nnU-Net's
residual-encoder U-Net of the user's own ResEnc plan)."""
