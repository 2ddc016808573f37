"""Online-learned segment models: behavioural clusters, purchase intent, drift, versioned snapshots."""
