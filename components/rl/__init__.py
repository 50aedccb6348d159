"""Reinforcement-learning components: gymnasium environments, rollouts, policies, RL losses."""
