"""A throwaway Flower app: FedAvg of a 4-number model, for the deployment test."""
