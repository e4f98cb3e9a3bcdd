"""Model families shipped with the core. Registered in :mod:`kdcore.builtin.models`."""
