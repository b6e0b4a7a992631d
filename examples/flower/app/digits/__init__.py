"""The example's Flower app: load_digits across five trainers, aggregated by mpcagg."""
