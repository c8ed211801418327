"""Training of learned emulators (``filtrax train CONFIG``)."""
