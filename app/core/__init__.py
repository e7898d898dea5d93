"""Framework-free core of the control plane: settings, errors, ids, storage."""
