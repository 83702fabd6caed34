"""Each CPU pool's engine threads get their own cores on a host that runs several."""

from service.cpu_placement import place_cpu_pools, shares
from service.settings import PoolSettings, Settings


def test_two_pools_on_two_cores_share_one_and_leave_the_other_to_the_rest():
    assert shares(["moe", "dense"], [0, 1]) == {"moe": "0", "dense": "0"}


def test_the_other_cores_are_split_into_contiguous_equal_shares():
    assert shares(["a", "b"], range(9)) == {"a": "0,1,2,3", "b": "4,5,6,7"}
    assert shares(["a", "b", "c"], [3, 1, 2, 0, 4]) == {"a": "0", "b": "1", "c": "2,3"}


def test_more_pools_than_cores_take_turns_on_them():
    assert shares(["a", "b", "c"], [0, 1, 2]) == {"a": "0", "b": "1", "c": "0"}


def test_one_core_is_shared_by_everything():
    assert shares(["a", "b"], [5]) == {"a": "5", "b": "5"}


def test_the_embedded_pools_keep_off_the_last_core():
    placed = place_cpu_pools(Settings(), [0, 1, 2, 3, 4])
    assert [p.cpu_threads_bind for p in placed.pools] == ["0", "1", "2,3"]


def test_a_pool_with_its_own_binding_keeps_it():
    settings = Settings(
        pools=[
            PoolSettings(
                id="gemma-4-31b-it",
                checkpoint="tiny:dense",
                device="cpu",
                cpu_threads_bind="nobind",
            ),
            PoolSettings(id="gemma-4-26b-a4b-it", checkpoint="tiny:moe", device="cpu"),
        ]
    )
    placed = place_cpu_pools(settings, [0, 1, 2, 3])
    assert [p.cpu_threads_bind for p in placed.pools] == ["nobind", "0,1,2"]


def test_gpu_pools_are_left_to_vllm():
    settings = Settings(pools=[PoolSettings(id="gemma-4-31b-it")])
    assert place_cpu_pools(settings, [0, 1]).pools[0].cpu_threads_bind is None
