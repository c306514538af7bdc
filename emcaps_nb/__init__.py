__version__ = "0.0.1"

from .gaussian_em import GaussianMixture, GMMFit, gaussian_log_density, gmm_e_step, gmm_m_step, fit_gmm
from .votes import kernel_tile, mat_transform
from .mstep import COSTS, m_step
from .routing import (e_step, e_step_logits, em_routing, em_routing_steps, inverse_temperature_schedule, paper_schedule, RoutingStep,
                      child_softmax, spatial_children, spatial_em_routing, spatial_initial_rr)
from .fast_routing import BACKENDS, CHUNK_MB, KERNEL_FILES, cpu_kernel, em_routing_fast, kernel_source, vote_and_route
from .triton_routing import compile_check, triton_available   # registers the triton backend of em_routing_fast
from .explorer import VoteProblem, vote_clusters, explore_routing, plot_routing, routing_explorer
from .coordinates import coord_addition, coord_offsets
from .layers import VARIANTS, PrimaryCaps, ConvCaps, ClassCaps, CapsNet, calibrate_activations, cost_scale_rule
from .loss import spread_loss, spread_loss_margin
from .data import DATASETS, DatasetNotFoundError, ImageDataset, RandomShift, SmallNORB, get_dataset, read_idx, read_norb
from .baseline import CNNBaseline
from .training import (MODEL_CONFIGS, CheckpointError, DivergenceError, non_finite, TrainConfig, TrainResult, build_model, evaluate, load_checkpoint,
                       load_model, save_checkpoint, select_device, source_commit, train)
from .analysis import PoseDecoder, adversarial_accuracy, attack_loss, bim, class_routing_trace, fgsm, fit_pose_decoder, perturb_pose
# emcaps_nb.results, emcaps_nb.ablation, emcaps_nb.toynorb and emcaps_nb.bench are imported on their own (each is also run with python -m)
