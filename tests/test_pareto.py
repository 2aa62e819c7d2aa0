"""The Pareto front of quality against a cost: the runs no other beats on both axes."""

from llm_tuning.lab.pareto import dominates, front


def test_front_of_a_loss_against_a_cost_lower_is_better_on_both():
    # (cost, loss): c is beaten by b (cheaper and better), e ties d's cost with a worse loss
    points = {"a": (1.0, 3.0), "b": (2.0, 2.0), "c": (3.0, 2.5), "d": (4.0, 1.0), "e": (4.0, 1.5)}
    names = list(points)
    assert [names[i] for i in front(list(points.values()))] == ["a", "b", "d"]
    assert dominates(points["b"], points["c"]) and not dominates(points["a"], points["b"])
    assert not dominates((1.0, 1.0), (1.0, 1.0))  # a point never beats its equal: both stay on the front
    assert front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]


def test_front_against_a_speed_where_higher_is_better():
    # (tokens/s, loss): the fastest run is on the front whatever its loss; a slower and worse one is not
    points = [(100.0, 2.0), (300.0, 3.0), (200.0, 2.5), (150.0, 2.6)]
    assert front(points, x_lower=False) == [0, 2, 1]
    assert front(points, x_lower=True) == [0]
