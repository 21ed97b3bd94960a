"""Build rendernode's demo scene. Runs inside Blender: ``blender -b --factory-startup -P demo.py -- OUT.blend``.

A small animated scene (a spinning, bobbing cube over a floor, one light, one camera)
tuned so one Cycles frame renders in well under a second on two CPU cores.
"""

import math
import sys

import bpy  # type: ignore[import-not-found]


def build(out_path: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start = 1
    scene.frame_end = 250

    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x = 320
    render.resolution_y = 180
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    render.use_overwrite = True
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    scene.cycles.max_bounces = 4
    scene.eevee.taa_render_samples = 16

    world = bpy.data.worlds.new("DemoWorld")
    world.color = (0.05, 0.06, 0.08)
    scene.world = world

    bpy.ops.mesh.primitive_plane_add(size=8.0, location=(0.0, 0.0, 0.0))
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 1.0))
    cube = bpy.context.active_object
    material = bpy.data.materials.new("DemoOrange")
    material.diffuse_color = (0.9, 0.35, 0.05, 1.0)
    cube.data.materials.append(material)

    # One keyframe per second of a spin and a bob, so every frame differs.
    for frame in range(scene.frame_start, scene.frame_end + 1, 24):
        turn = (frame - 1) / 48.0 * math.pi
        cube.rotation_euler = (0.0, 0.0, turn)
        cube.location.z = 1.0 + 0.4 * math.sin(turn)
        cube.keyframe_insert("rotation_euler", frame=frame)
        cube.keyframe_insert("location", frame=frame)

    light_data = bpy.data.lights.new("DemoSun", type="SUN")
    light_data.energy = 3.0
    light = bpy.data.objects.new("DemoSun", light_data)
    light.rotation_euler = (0.8, 0.2, 0.6)
    scene.collection.objects.link(light)

    camera_data = bpy.data.cameras.new("DemoCamera")
    camera = bpy.data.objects.new("DemoCamera", camera_data)
    camera.location = (5.0, -5.0, 3.5)
    camera.rotation_euler = (math.radians(65.0), 0.0, math.radians(45.0))
    scene.collection.objects.link(camera)
    scene.camera = camera

    bpy.ops.wm.save_as_mainfile(filepath=out_path, compress=False)


if __name__ == "__main__":
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if len(argv) != 1:
        raise SystemExit("usage: blender -b --factory-startup -P demo.py -- OUT.blend")
    build(argv[0])
