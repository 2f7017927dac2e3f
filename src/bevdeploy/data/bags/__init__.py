"""ROS 2 bags (MCAP) as a frame source, without a ROS install (``mcap`` + ``mcap-ros2-support``).

A team's recordings are ROS 2 bags; reading them directly spares every user a converter. The
bag is streamed chunk by chunk in log order with bounded memory (``reader``), its messages are
decoded by their ROS 2 definitions (``pointcloud2``, ``images``), camera↔LiDAR extrinsics and
ego motion come from the TF tree (``tf``), each LiDAR sweep is synchronised with the nearest
image of every camera (``source``), and which topic is which sensor is a small YAML file or
detected from the topic names and ``frame_id``s (``topics``).

==============  ==============================================================================
``msgdefs``     the ROS 2 message definitions bevdeploy writes (synthetic bags, tests)
``reader``      the bag: index, topics and rates, messages in order, corrupt chunks named
``pointcloud2`` ``sensor_msgs/PointCloud2`` of any field layout → points (and back)
``images``      ``CompressedImage`` / ``Image`` → RGB, ``CameraInfo`` → K
``tf``          the TF tree: static and timed transforms, chains, interpolation
``topics``      the topic map (topic → camera / LiDAR): YAML, auto-detection
``source``      ``BagSource``: sweeps as keys, camera sync, multi-sweep points, Frames
==============  ==============================================================================
"""
